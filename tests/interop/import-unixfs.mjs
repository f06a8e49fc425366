// Import a folder with ipfs-unixfs-importer and print the root CID.
// Usage: node import-unixfs.mjs FOLDER [PROFILE]   (PROFILE: unixfs-v1-2025 by default)
// Used by tests/test_format_interop.py for known answers of directory sharding (IPIP-0499).
import { readdir, readFile } from 'node:fs/promises'
import { join, relative, basename } from 'node:path'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'

async function * entries (root, dir) {
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, d.name)
    const path = join(basename(root), relative(root, full))
    if (d.isDirectory()) {
      yield { path }
      yield * entries(root, full)
    } else {
      yield { path, content: await readFile(full) }
    }
  }
}

const [folder, profile = 'unixfs-v1-2025'] = process.argv.slice(2)
let last
for await (const entry of importer(entries(folder, folder), new MemoryBlockstore(), { profile })) {
  if (entry.path === basename(folder)) last = entry
}
console.log(last.cid.toString())

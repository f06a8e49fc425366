// Import a file or folder with ipfs-unixfs-importer under a CID profile; print JSON
// {"root": CID, "entries": {path: CID}} (paths relative to PATH's parent, "/"-separated).
// Usage: node import-profile.mjs PATH [PROFILE] [CHUNK_BYTES]
//   PROFILE: unixfs-v1-2025 by default. CHUNK_BYTES replaces the profile's fixed chunk
//   size (everything else of the profile stays, e.g. 1024 links per file node), so a
//   test can reach the layout's upper levels with small files.
// Used by tests/test_profiles.py for known answers of `dstore add --profile`.
import { readdir, readFile, stat } from 'node:fs/promises'
import { join, relative, basename, dirname } from 'node:path'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'

async function * entries (top, dir) {
  const names = (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name < b.name ? -1 : 1)
  for (const d of names) {
    const full = join(dir, d.name)
    const path = relative(dirname(top), full)
    if (d.isDirectory()) {
      yield { path }
      yield * entries(top, full)
    } else {
      yield { path, content: await readFile(full) }
    }
  }
}

async function * candidates (top) {
  if ((await stat(top)).isDirectory()) {
    yield { path: basename(top) }
    yield * entries(top, top)
  } else {
    yield { path: basename(top), content: await readFile(top) }
  }
}

const [top, profile = 'unixfs-v1-2025', chunkBytes] = process.argv.slice(2)
const options = { profile }
if (chunkBytes !== undefined) options.chunker = fixedSize({ chunkSize: Number(chunkBytes) })
const found = {}
for await (const entry of importer(candidates(top), new MemoryBlockstore(), options)) {
  found[entry.path] = entry.cid.toString()
}
console.log(JSON.stringify({ root: found[basename(top)], entries: found }))

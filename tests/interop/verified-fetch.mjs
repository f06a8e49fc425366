// Fetch files by path through @helia/verified-fetch, with one trustless gateway (a dstore peer) as the only
// source and a BLAKE3 hasher added (dstore's default hash). Used by tests/test_interop_clients.py.
//
//   node verified-fetch.mjs http://127.0.0.1:7070 ipfs://bafy…/a.txt ipfs://bafy…/sub/b.csv
//
// Prints one JSON line per URL: {"url", "status", "bytes", "sha256"} (sha256 of the body, hex).
// Every block verified-fetch receives is checked against its CID before its bytes are used.
import { createHash } from 'node:crypto'
import { withHTTP } from '@helia/http'
import { createVerifiedFetch } from '@helia/verified-fetch'
import { blake3 } from '@noble/hashes/blake3.js'
import { createHeliaLight } from 'helia'
import { from } from 'multiformats/hashes/hasher'

const [gateway, ...urls] = process.argv.slice(2)
const blake3Hasher = from({ name: 'blake3', code: 0x1e, encode: (input) => blake3(input) })

const helia = await withHTTP(createHeliaLight({ hashers: [blake3Hasher] }), {
  delegatedRouters: [gateway], // the peer answers /routing/v1/providers too (with no router at all, Helia waits forever)
  recursiveGateways: [gateway],
  allowLocal: true,
  allowInsecure: true
}).start()
const verifiedFetch = await createVerifiedFetch(helia)
try {
  for (const url of urls) {
    const response = await verifiedFetch(url)
    const body = Buffer.from(await response.arrayBuffer())
    const sha256 = createHash('sha256').update(body).digest('hex')
    console.log(JSON.stringify({ url, status: response.status, bytes: body.length, sha256 }))
  }
} finally {
  await verifiedFetch.stop()
  await helia.stop()
}

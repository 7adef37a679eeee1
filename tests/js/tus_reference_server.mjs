// The reference tus server (@tus/server with @tus/file-store), for the benchmark's baseline.
// Usage: node tus_reference_server.mjs PORT DIRECTORY. Prints {"event":"listening","port":N}.
import http from 'node:http'
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const [port, directory] = process.argv.slice(2)
const tusServer = new Server({ path: '/files', datastore: new FileStore({ directory }) })
const server = http.createServer((req, res) => tusServer.handle(req, res))
server.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ event: 'listening', port: server.address().port })}\n`)
})

// Many graphql-transport-ws subscribers in one Node process, for tests/bench/fanout.py and
// fanout_stalled.py: real websocket clients over TCP (the npm `ws` package), as cheap per message
// as a client can be, so that the benchmark measures the server rather than its own clients.
//
// Usage: node fanout_subscribers.mjs '<json options>'. Options:
//   url              ws://host:port/graphql
//   token            sent as connection_init {"authorization": "Bearer <token>"}
//   query            the subscription document; variables {"id": <upload id>}
//   uploads          [[uploadId, subscribers], ...]: that many sockets (one subscription each) per upload
//   connectingAtOnce at most this many sockets between opening and their first event (the snapshot)
//   timeoutSeconds   give up (exit 1) when the subscriptions have not all completed by then
// Prints one JSON object per line on stdout:
//   {"event":"ready","seconds":S}   every subscriber has its snapshot: the driver may start
//   {"event":"done","subscribers":[{"upload":ID,"parts":{"<partNumber>":latency},"sequences":[...],
//     "statuses":[...],"lastArrival":T}, ...], "at":{ID:{"<partNumber>":T}}}   after every subscription's
//     `complete` (or COMPLETED); "at" holds each part event's `at` once per upload; "cpuSeconds" this
//     process's user + system CPU time until then
//   {"event":"error","message":...}  (exit code 1)
// latency: arrival wall time minus the event's `at`, in seconds; lastArrival: the wall time (epoch
// seconds) of the subscriber's last part event. Arrival is Date.now(), the wall clock `at` is
// written with, at its millisecond resolution.
import WebSocket from 'ws'

const options = JSON.parse(process.argv[2])
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`)
const started = Date.now()
const atOf = {} // uploadId -> {partNumber: at}, the same for each of the upload's subscribers
const fail = (error) => {
  emit({ event: 'error', message: String(error?.stack ?? error) })
  process.exit(1)
}

// `at` is Python's isoformat(): microseconds when there are any; Date.parse keeps milliseconds.
function epochSeconds(at) {
  const dot = at.indexOf('.', 19)
  let micros = 0
  if (dot === 19) {
    const digits = at.slice(20, 26)
    micros = Number(digits.padEnd(6, '0')) % 1000
  }
  return (Date.parse(at) + micros / 1000) / 1000
}

function subscribe(uploadId, record, onFirstEvent) {
  return new Promise((resolve) => {
    const ws = new WebSocket(options.url, ['graphql-transport-ws'], { perMessageDeflate: false })
    let first = true
    let finished = false
    const finish = () => {
      finished = true
      ws.close(1000)
      resolve()
    }
    ws.on('open', () => {
      ws.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${options.token}` } }))
    })
    ws.on('message', (data) => {
      const arrival = Date.now() / 1000
      try {
        handle(JSON.parse(data), arrival)
      } catch (error) {
        fail(error)
      }
    })
    const handle = (message, arrival) => {
      switch (message.type) {
        case 'connection_ack':
          ws.send(JSON.stringify({ id: '1', type: 'subscribe', payload: { query: options.query, variables: { id: uploadId } } }))
          return
        case 'ping':
          ws.send('{"type":"pong"}')
          return
        case 'pong':
          return
        case 'complete':
          if (message.id === '1') finish()
          return
        case 'next': {
          if (message.id !== '1') return
          if (message.payload.errors) throw new Error(`subscription error: ${JSON.stringify(message)}`)
          const event = message.payload.data.uploadProgress
          record.sequences.push(event.sequence)
          record.statuses.push(event.status)
          if (event.partNumber !== null) {
            record.lastArrival = arrival
            const at = epochSeconds(event.at)
            record.parts[event.partNumber] = arrival - at
            const ats = (atOf[uploadId] ??= {})
            ats[event.partNumber] ??= at
          }
          if (first) {
            first = false
            onFirstEvent()
          }
          if (event.status === 'COMPLETED') finish()
          return
        }
        default:
          throw new Error(`unexpected message: ${JSON.stringify(message)}`)
      }
    }
    ws.on('error', (error) => {
      if (!finished) fail(error)
    })
    ws.on('close', (code, reason) => {
      if (!finished) fail(new Error(`the server closed a subscriber's socket: ${code} ${reason}`))
    })
  })
}

async function main() {
  const records = []
  const waiting = []
  for (const [uploadId, count] of options.uploads) {
    for (let n = 0; n < count; n++) records.push({ upload: uploadId, parts: {}, sequences: [], statuses: [], lastArrival: 0 })
  }
  // A gate of connectingAtOnce slots, each held from opening a socket to its snapshot.
  let slots = options.connectingAtOnce
  const queue = []
  const acquire = () => (slots > 0 ? (slots--, Promise.resolve()) : new Promise((resolve) => queue.push(resolve)))
  const release = () => (queue.length ? queue.shift()() : slots++)
  let ready = 0
  let markReady
  const allReady = new Promise((resolve) => {
    markReady = resolve
  })
  const onFirstEvent = () => {
    release()
    if (++ready === records.length) markReady()
  }
  for (const record of records) {
    await acquire()
    waiting.push(subscribe(record.upload, record, onFirstEvent))
  }
  const done = Promise.all(waiting)
  await Promise.race([allReady, done])
  emit({ event: 'ready', seconds: (Date.now() - started) / 1000 })
  await done
  const cpu = process.cpuUsage()
  emit({ event: 'done', cpuSeconds: (cpu.user + cpu.system) / 1e6, subscribers: records, at: atOf })
}

const deadline = setTimeout(() => {
  emit({ event: 'error', message: `not every subscription completed within ${options.timeoutSeconds} s` })
  process.exit(1)
}, options.timeoutSeconds * 1000)

main().then(() => clearTimeout(deadline), fail)

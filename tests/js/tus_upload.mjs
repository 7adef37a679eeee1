// Drives tus-js-client (the real npm package) in Node for the integration tests and the benchmark.
// Usage: node tus_upload.mjs '<json options>'. Prints one JSON object per line on stdout:
//   {"event":"request","method":...,"offset":...}  every request the client sends
//   {"event":"head","offset":N}                       the offset a HEAD answered (resuming)
//   {"event":"progress","bytesSent":N}                throttled progress
//   {"event":"aborted","url":...,"bytesSent":N}       after abortAfterBytes, upload.abort() was called
//   {"event":"success","url":...,"seconds":S}         done
//   {"event":"error","message":...}                   failed (exit code 1)
// Options: endpoint, token, file, metadata, chunkSize, parallelUploads, uploadDataDuringCreation,
// uploadUrl (resume from it), abortAfterBytes, retryDelays.
import fs from 'node:fs'
import * as tus from 'tus-js-client'

const options = JSON.parse(process.argv[2])
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`)

const started = process.hrtime.bigint()
let lastProgress = 0
let aborted = false
const upload = new tus.Upload(fs.createReadStream(options.file), {
  endpoint: options.endpoint,
  uploadUrl: options.uploadUrl ?? null,
  headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
  metadata: options.metadata ?? {},
  chunkSize: options.chunkSize ?? Number.POSITIVE_INFINITY,
  parallelUploads: options.parallelUploads ?? 1,
  uploadDataDuringCreation: options.uploadDataDuringCreation ?? false,
  retryDelays: options.retryDelays ?? [0, 1000, 3000, 5000],
  storeFingerprintForResuming: false,
  onBeforeRequest(req) {
    emit({ event: 'request', method: req.getMethod(), url: req.getURL(), offset: req.getHeader('Upload-Offset') ?? null })
  },
  onAfterResponse(req, res) {
    if (req.getMethod() === 'HEAD') emit({ event: 'head', offset: Number(res.getHeader('Upload-Offset')) })
  },
  onProgress(bytesSent) {
    if (!aborted && options.abortAfterBytes != null && bytesSent >= options.abortAfterBytes) {
      aborted = true
      upload.abort().then(() => {
        emit({ event: 'aborted', url: upload.url, bytesSent })
        process.exit(0)
      })
      return
    }
    if (bytesSent - lastProgress >= 8 * 1024 * 1024) {
      lastProgress = bytesSent
      emit({ event: 'progress', bytesSent })
    }
  },
  onError(error) {
    emit({ event: 'error', message: String(error) })
    process.exit(1)
  },
  onSuccess() {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    emit({ event: 'success', url: upload.url, seconds })
  },
})
upload.start()

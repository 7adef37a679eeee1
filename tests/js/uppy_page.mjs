// Uppy's @uppy/aws-s3 in Companion mode, bundled with esbuild for tests/browser/test_uppy.py.
// Nothing here changes Uppy: the page only adds X-CSRFToken to its own /s3/ requests (Uppy 6's
// Companion client sends no custom headers, and a session POST or DELETE needs the token).
import Uppy from '@uppy/core'
import AwsS3 from '@uppy/aws-s3'

const csrfToken = () =>
  (document.cookie.split('; ').find((c) => c.startsWith('csrftoken=')) || '').split('=')[1] || ''

const pageFetch = window.fetch.bind(window)
window.fetch = (input, init = {}) => {
  const url = new URL(typeof input === 'string' ? input : input.url, window.location.href)
  if (url.origin === window.location.origin && url.pathname.startsWith('/s3/')) {
    init = { ...init, headers: { ...(init.headers || {}), 'X-CSRFToken': csrfToken() } }
  }
  return pageFetch(input, init)
}

// The bytes of the test file: the same formula in the test, so nothing large crosses the bridge.
export function patternBytes(size) {
  const data = new Uint8Array(size)
  for (let i = 0; i < size; i++) data[i] = (i * 31 + 7) % 251
  return data
}

window.uppyUpload = async ({ size, name }) => {
  const uppy = new Uppy({ autoProceed: false }).use(AwsS3, {
    companionEndpoint: window.location.origin,
    shouldUseMultipart: () => true,
  })
  const parts = []
  uppy.on('s3-multipart:part-uploaded', (_file, part) => parts.push(part.PartNumber))
  uppy.addFile({ name, type: 'application/octet-stream', data: new Blob([patternBytes(size)]) })
  const result = await uppy.upload()
  return {
    successful: result.successful.map((f) => f.response.body),
    failed: result.failed.map((f) => String(f.error)),
    parts,
  }
}

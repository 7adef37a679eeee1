// Uppy's own packages for a browser page: @uppy/core and @uppy/tus (with the tus-js-client they use),
// bundled by esbuild at test time (tests/support/uppy.py), since their ESM imports CommonJS modules
// a browser cannot load as they are. Nothing here is served by the product.
export { default as Uppy } from "@uppy/core";
export { default as Tus } from "@uppy/tus";

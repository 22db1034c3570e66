/**
 * @stationthis/storage/testing: in-memory fakes of the storage ports, for
 * unit tests of code that uses them (the worker's pipeline steps). Each fake
 * passes the same conformance suite as its real adapter
 * (libs/storage/test/conformance), so it cannot drift from it.
 */
export { InMemoryObjects } from './in-memory-objects';
export { InMemoryModelUpload } from './in-memory-model-upload';
export { InMemoryDatasetFetch } from './in-memory-dataset-fetch';
export { InMemoryWeightCache } from './in-memory-weight-cache';
export { jpegOf, pngOf, webpOf } from './images';

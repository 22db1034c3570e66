/**
 * @stationthis/common: the small utility tier the adapter libraries share
 * (libs/db, libs/points, libs/storage, the worker), so each rule lives once.
 */
export { idForms, isObjectIdHex, toObjectId, toObjectIdOrString, type IdLike } from './ids';
export { ensureNamedIndexes, insertOnce, isDuplicateKeyError, type NamedIndex } from './indexes';
export { redactUrl } from './redact';

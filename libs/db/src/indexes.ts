/** Moved to @stationthis/common (one index helper for db and points); re-exported for existing imports. */
export { ensureNamedIndexes, type NamedIndex } from '@stationthis/common';

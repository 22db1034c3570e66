export const LIB_NAME = '@stationthis/storage';

export const LIB_NAME = '@stationthis/points';

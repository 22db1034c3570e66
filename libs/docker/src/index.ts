export const LIB_NAME = '@stationthis/docker';

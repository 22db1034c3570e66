export const LIB_NAME = '@stationthis/db';

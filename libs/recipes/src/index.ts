export const LIB_NAME = '@stationthis/recipes';

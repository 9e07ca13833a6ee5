export * from './errors';
export * from './config';
export * from './vault';
export * from './verify';

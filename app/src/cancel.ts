import * as net from 'node:net';

/** The CancelRequest code of the Postgres protocol (1234 << 16 | 5678). */
const CANCEL_REQUEST_CODE = 80877102;

/**
 * Asks Postgres to cancel the statement running on the backend `processId` (a CancelRequest on
 * a new connection, as libpq's PQcancel sends it: plain TCP, answered by the server closing it).
 * Resolves true once the server has closed the connection, false when it did not within
 * `timeoutMillis` (a frozen server accepts the connection but never reads it) or the connection
 * failed. Never rejects.
 */
export function sendCancelRequest(host: string, port: number, processId: number, secretKey: number, timeoutMillis: number): Promise<boolean> {
  return new Promise((resolve) => {
    const packet = Buffer.alloc(16);
    packet.writeInt32BE(16, 0);
    packet.writeInt32BE(CANCEL_REQUEST_CODE, 4);
    packet.writeInt32BE(processId, 8);
    packet.writeInt32BE(secretKey, 12);
    const socket = host.startsWith('/') ? net.connect({ path: `${host}/.s.PGSQL.${port}` }) : net.connect({ host, port });
    let settled = false;
    const finish = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), Math.max(1, timeoutMillis));
    timer.unref();
    socket.once('connect', () => socket.write(packet));
    // The server reads the request and closes the connection; it sends nothing.
    socket.once('end', () => finish(true));
    socket.once('close', () => finish(true));
    socket.once('error', () => finish(false));
    socket.resume();
  });
}

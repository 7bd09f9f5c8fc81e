/**
 * `node tcp-forward.js PORT`: joins its stdin and stdout to a TCP connection to 127.0.0.1:PORT.
 * QEMU's user network runs it once per guest connection to a `guestfwd=...-cmd:` address, so a guest on
 * a restricted user network (no route to the host or anywhere else) reaches exactly one host listener.
 */
import { connect } from "node:net";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write("usage: tcp-forward PORT\n");
  process.exit(2);
}
const socket = connect(port, "127.0.0.1");
process.stdin.pipe(socket);
socket.pipe(process.stdout);
socket.on("error", () => process.exit(1));
socket.on("close", () => process.exit(0));

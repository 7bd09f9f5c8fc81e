/**
 * A tiny network probe the system tests run inside network namespaces (`ip netns exec <ns> node
 * netprobe.js ...`), so they need nothing but node and iproute2:
 *
 *   listen [--tcp 8844,8006] [--udp 9999] [--max-ms N]   accept TCP connections (answer "ok" and close)
 *        and print "udp <from-address> <payload>" for each datagram; prints "ready" once listening.
 *        Exits by itself after --max-ms (default 10 minutes) so nothing outlives a crashed test.
 *   connect <host> <port> <timeout-ms> [local-address]   print open | refused | unreachable | timeout | error:<code>
 *   udp-send <host> <port> <payload> [local-address]     send one datagram; print sent | error:<code>
 *   sysctl <key> <value>   write /proc/sys/<key, dots as slashes> of the namespace it runs in
 */
import { createSocket } from "node:dgram";
import { writeFileSync } from "node:fs";
import { createServer, Socket } from "node:net";

function listen(args: string[]): void {
  let tcp: number[] = [];
  let udp: number[] = [];
  let maxMs = 600_000;
  for (let i = 0; i < args.length; i += 2) {
    const value = args[i + 1] ?? "";
    const list = value
      .split(",")
      .filter((part) => part !== "")
      .map(Number);
    if (args[i] === "--tcp") tcp = list;
    else if (args[i] === "--udp") udp = list;
    else if (args[i] === "--max-ms") maxMs = Number(value);
    else throw new Error(`netprobe listen: unknown argument ${args[i]}`);
  }
  setTimeout(() => process.exit(0), maxMs).unref();
  let pending = tcp.length + udp.length;
  const ready = () => {
    pending--;
    if (pending === 0) process.stdout.write("ready\n");
  };
  for (const port of tcp) {
    const server = createServer((socket) => {
      socket.on("error", () => undefined);
      socket.end("ok\n");
    });
    server.on("error", (error) => {
      process.stderr.write(`netprobe: tcp ${port}: ${error.message}\n`);
      process.exit(1);
    });
    server.listen({ port, host: "0.0.0.0" }, ready);
  }
  for (const port of udp) {
    const socket = createSocket("udp4");
    socket.on("message", (message, remote) => {
      process.stdout.write(`udp ${remote.address} ${message.toString("utf8").replace(/\s+/g, "_")}\n`);
    });
    socket.on("error", (error) => {
      process.stderr.write(`netprobe: udp ${port}: ${error.message}\n`);
      process.exit(1);
    });
    socket.bind({ port, address: "0.0.0.0" }, ready);
  }
  if (pending === 0) process.stdout.write("ready\n");
}

function connect(host: string, port: number, timeoutMs: number, localAddress?: string): void {
  const socket = new Socket();
  const done = (result: string) => {
    socket.destroy();
    process.stdout.write(`${result}\n`);
    process.exit(0);
  };
  const timer = setTimeout(() => done("timeout"), timeoutMs);
  socket.on("connect", () => {
    clearTimeout(timer);
    done("open");
  });
  socket.on("error", (error: NodeJS.ErrnoException) => {
    clearTimeout(timer);
    if (error.code === "ECONNREFUSED") done("refused");
    else if (error.code === "EHOSTUNREACH" || error.code === "ENETUNREACH") done("unreachable");
    else if (error.code === "ETIMEDOUT") done("timeout");
    else done(`error:${error.code ?? error.message}`);
  });
  socket.connect({ host, port, ...(localAddress ? { localAddress } : {}) });
}

function udpSend(host: string, port: number, payload: string, localAddress?: string): void {
  const socket = createSocket("udp4");
  const timer = setTimeout(() => {
    process.stdout.write("error:timeout\n");
    process.exit(0);
  }, 5000);
  const send = () =>
    socket.send(payload, port, host, (error) => {
      clearTimeout(timer);
      process.stdout.write(
        error ? `error:${(error as NodeJS.ErrnoException).code ?? error.message}\n` : "sent\n",
      );
      socket.close();
    });
  socket.on("error", (error: NodeJS.ErrnoException) => {
    clearTimeout(timer);
    process.stdout.write(`error:${error.code ?? error.message}\n`);
    process.exit(0);
  });
  if (localAddress) socket.bind({ address: localAddress, port: 0 }, send);
  else send();
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === "listen") listen(rest);
else if (mode === "connect") connect(rest[0]!, Number(rest[1]), Number(rest[2]), rest[3]);
else if (mode === "udp-send") udpSend(rest[0]!, Number(rest[1]), rest[2]!, rest[3]);
else if (mode === "sysctl" && /^[a-z0-9_.-]+$/.test(rest[0] ?? "")) {
  writeFileSync(`/proc/sys/${rest[0]!.replaceAll(".", "/")}`, `${rest[1]}\n`);
} else {
  process.stderr.write("usage: netprobe listen|connect|udp-send ...\n");
  process.exit(2);
}

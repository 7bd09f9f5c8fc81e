import { Transform, type TransformCallback } from "node:stream";

/** Longest header block accepted; real clients send one or two short headers. */
const MAX_HEADER_BYTES = 8 * 1024;
const HEADER_END = Buffer.from("\r\n\r\n");

export class FrameError extends Error {
  constructor(
    message: string,
    readonly reason: "oversized" | "malformed",
  ) {
    super(message);
    this.name = "FrameError";
  }
}

/**
 * Sits between a client's socket and the JSON-RPC reader and checks the `Content-Length` framing
 * before any body is buffered: a frame that declares more than `maxFrameBytes`, a header block that
 * never ends, or a header without a valid Content-Length fails the stream, so the caller can close
 * that one connection. Bytes pass through unchanged.
 */
export class FrameGuard extends Transform {
  private header = Buffer.alloc(0);
  private bodyRemaining = 0;

  constructor(private readonly maxFrameBytes: number) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.bodyRemaining > 0) {
        const take = Math.min(this.bodyRemaining, chunk.length - offset);
        this.bodyRemaining -= take;
        offset += take;
        continue;
      }
      const scanFrom = Math.max(0, this.header.length - (HEADER_END.length - 1));
      this.header = Buffer.concat([this.header, chunk.subarray(offset)]);
      const end = this.header.indexOf(HEADER_END, scanFrom);
      if (end < 0) {
        if (this.header.length > MAX_HEADER_BYTES) {
          callback(new FrameError(`header block longer than ${MAX_HEADER_BYTES} bytes`, "malformed"));
          return;
        }
        break;
      }
      let length: number;
      try {
        length = this.contentLength(this.header.subarray(0, end).toString("ascii"));
      } catch (error) {
        callback(error as Error);
        return;
      }
      const consumedOfChunk = end + HEADER_END.length - (this.header.length - (chunk.length - offset));
      offset += consumedOfChunk;
      this.header = Buffer.alloc(0);
      this.bodyRemaining = length;
    }
    callback(null, chunk);
  }

  private contentLength(block: string): number {
    let length: number | undefined;
    for (const line of block.split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon <= 0)
        throw new FrameError(`malformed header line ${JSON.stringify(line.slice(0, 80))}`, "malformed");
      if (line.slice(0, colon).trim().toLowerCase() !== "content-length") continue;
      const value = line.slice(colon + 1).trim();
      if (!/^\d{1,12}$/.test(value)) {
        throw new FrameError(`invalid Content-Length ${JSON.stringify(value.slice(0, 40))}`, "malformed");
      }
      length = Number(value);
    }
    if (length === undefined) throw new FrameError("frame without a Content-Length header", "malformed");
    if (length > this.maxFrameBytes) {
      throw new FrameError(
        `frame of ${length} bytes exceeds the ${this.maxFrameBytes}-byte limit`,
        "oversized",
      );
    }
    return length;
  }
}

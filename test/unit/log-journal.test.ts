/**
 * Under systemd the daemon's lines carry syslog priorities, so `journalctl -u agentlabd -p warning`
 * shows warnings and errors only; anywhere else (a pipe, a file, a terminal) the lines stay plain JSON.
 */
import assert from "node:assert/strict";
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { createLogger, withPriority, writesToJournal } from "../../src/daemon/log.js";

const dir = mkdtempSync(join(tmpdir(), "agentlab-log-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function logTo(name: string, journal: boolean): string[] {
  const path = join(dir, name);
  const fd = openSync(path, "w");
  const stat = fstatSync(fd, { bigint: true });
  const saved = process.env.JOURNAL_STREAM;
  // What systemd sets: the stream's device and inode; a different one means stdout was redirected.
  process.env.JOURNAL_STREAM = journal ? `${stat.dev}:${stat.ino}` : `${stat.dev}:${stat.ino + 1n}`;
  try {
    const log = createLogger("debug", fd);
    log.debug("a debug line");
    log.info("an info line");
    log.warn("a warning");
    log.error("an error");
  } finally {
    if (saved === undefined) delete process.env.JOURNAL_STREAM;
    else process.env.JOURNAL_STREAM = saved;
    closeSync(fd);
  }
  return readFileSync(path, "utf8").trim().split("\n");
}

describe("daemon log lines and journald priorities", () => {
  test("on the journal's stream each line starts with its syslog priority", () => {
    const lines = logTo("journal.log", true);
    assert.deepEqual(
      lines.map((l) => /^<(\d)>\{/.exec(l)?.[1]),
      ["7", "6", "4", "3"],
      lines.join("\n"),
    );
    assert.equal(JSON.parse(lines[2]!.slice(3)).msg, "a warning", "the rest is the JSON line");
  });

  test("a redirected stdout (another dev:ino than JOURNAL_STREAM) stays plain JSON", () => {
    const lines = logTo("plain.log", false);
    for (const line of lines) assert.match(line, /^\{/);
    assert.equal(writesToJournal(1, {}), false, "no JOURNAL_STREAM: not the journal");
  });

  test("withPriority leaves a line without a known level alone", () => {
    assert.equal(withPriority('{"msg":"x"}'), '{"msg":"x"}');
    assert.equal(withPriority('{"level":"warn","msg":"x"}'), '<4>{"level":"warn","msg":"x"}');
  });
});

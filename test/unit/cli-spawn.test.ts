import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { NOT_STARTED, runCommand, startBackground } from "../../src/cli/init/spawn.js";

/** Whether a process exists (signal 0 checks without sending anything). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Poll a condition with a generous cap: a bound, not a delay. */
async function until(what: string, condition: () => boolean, capMs = 30_000): Promise<void> {
  const deadline = Date.now() + capMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${capMs} ms`);
    await sleep(50);
  }
}

describe("the CLI's one way to run host commands (agentlab init)", () => {
  test("collects stdout, stderr and the exit status", async () => {
    const result = await runCommand("sh", ["-c", "echo out; echo err >&2; exit 3"]);
    assert.deepEqual(result, { code: 3, stdout: "out\n", stderr: "err\n" });
  });

  test("a command that is not installed is reported by its errno, with the shell's status, not thrown", async () => {
    const result = await runCommand("/nonexistent/agentlab-no-such-tool", ["--version"]);
    assert.equal(result.code, NOT_STARTED);
    assert.equal(result.spawnError, "ENOENT");
  });

  test("passes on each line as it comes, the last one even without a newline", async () => {
    const lines: string[] = [];
    const result = await runCommand("sh", ["-c", "echo one; echo two >&2; printf three"], {
      onLine: (line) => lines.push(line),
    });
    assert.equal(result.code, 0);
    assert.deepEqual([...lines].sort(), ["one", "three", "two"]);
  });

  test("aborting stops the command and what it started (its process group)", async () => {
    const abort = new AbortController();
    let grandchild = 0;
    const running = runCommand("sh", ["-c", "sleep 300 & echo $!; wait"], {
      onLine: (line) => {
        grandchild = Number(line);
        abort.abort();
      },
      signal: abort.signal,
    });
    const result = await running;
    assert.notEqual(result.code, 0);
    assert.ok(grandchild > 0);
    await until("the sleep the script started is gone", () => !alive(grandchild));
  });

  test("a background child: its stderr tail, why it could not start, and stop()", async () => {
    const server = startBackground("sh", ["-c", "echo listening >&2; exec sleep 300"]);
    await until("its stderr arrived", () => server.stderrTail().includes("listening"));
    const pid = server.child.pid!;
    assert.ok(alive(pid));
    await server.stop();
    assert.ok(!alive(pid) || server.child.exitCode !== null || server.child.signalCode !== null);
    const missing = startBackground("/nonexistent/agentlab-no-such-server", []);
    await until("the spawn failure is known", () => missing.spawnError() !== undefined);
    assert.equal(missing.spawnError(), "ENOENT");
    await missing.stop();
  });
});

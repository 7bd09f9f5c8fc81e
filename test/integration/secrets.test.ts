import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, normalize } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { createSmokeRepo, type SmokeRepo } from "../../src/cli/init/repo-server.js";
import { freePort } from "../helpers/ports.js";
import { type SimHost, startSimHost } from "../helpers/simhost.js";
import { setControl } from "../pvesim/harness.js";

/**
 * Secrets kept out of sight (issue 14): a repository URL with credentials and an agent that prints every
 * known secret shape. The real daemon, CLI and guest runner on the simulator; the repository is served
 * over git's dumb HTTP by a server that demands those credentials, so a COMPLETED job proves they reached
 * git. Then every place a secret could show is read back and searched.
 */

const PASSWORD = "pw-Zq81xVv3NotInOutput";
const LONE_TOKEN = "tok9F2kLmQ7wZxY3bR5";
// Built from pieces so this file itself is not mistaken for a leak by scanners.
const SHAPES = {
  ghp: `ghp_${"a1B2c3D4e5F6g7H8i9J0".repeat(2)}`,
  github_pat: `github_pat_11${"ABCDEFGHIJ0123456789".repeat(2)}_xyz`,
  openai: `sk-proj-${"Qw3rTy8uIoP2aSdFgH4j".repeat(2)}`,
  aws: `AKIA${"IOSFODNN7EXAMPL"}Q`,
  bearer: `eyJhbGciOiJIUzI1NiJ9.${"eyJzdWIiOiIxIn0"}.sig12345`,
  url: "https://deploy:UrlPassw0rd-77@example.invalid/private.git",
};
const LEAKS = [
  PASSWORD,
  LONE_TOKEN,
  ...Object.values(SHAPES).filter((v) => !v.startsWith("https")),
  "UrlPassw0rd-77",
];

/**
 * The agent: echoes each shape, and its job's own repository secret (an agent that found it in git's
 * credential file, say), the ways agents do.
 */
const leakyAgent = (ownSecret: string) => `#!/bin/sh
echo "GITHUB_TOKEN=${SHAPES.ghp}"
echo "fine-grained ${SHAPES.github_pat} in a sentence"
echo "export OPENAI_KEY=${SHAPES.openai}"
echo "aws key ${SHAPES.aws}"
echo "curl -H 'Authorization: Bearer ${SHAPES.bearer}' https://api.example.invalid"
echo "remote ${SHAPES.url}"
echo "the repository secret is ${ownSecret}, also as password: ${ownSecret}"
echo leaky-marker-41
exit 0
`;

interface JobBody {
  id: string;
  status: string;
  repo_url: string;
  sandbox_vmid?: number;
  result?: { message?: string; result?: { output_tail?: string } };
}

/** git's dumb HTTP over the bare repositories' parent, behind Basic auth; counts authorised requests. */
function authServer(root: string, accept: (user: string, pass: string) => boolean) {
  let authorised = 0;
  const server: Server = createServer((req, res) => {
    const header = req.headers.authorization ?? "";
    const decoded = header.startsWith("Basic ") ? Buffer.from(header.slice(6), "base64").toString() : "";
    const colon = decoded.indexOf(":");
    if (colon < 0 || !accept(decoded.slice(0, colon), decoded.slice(colon + 1))) {
      res.writeHead(401, { "WWW-Authenticate": 'Basic realm="test"' }).end();
      return;
    }
    authorised++;
    const file = normalize(join(root, decodeURIComponent((req.url ?? "/").split("?")[0]!)));
    if (!file.startsWith(root)) return void res.writeHead(403).end();
    try {
      res.writeHead(200).end(readFileSync(file));
    } catch {
      res.writeHead(404).end();
    }
  });
  return {
    server,
    get authorised() {
      return authorised;
    },
  };
}

describe("secrets stay out of every output (shell backend)", () => {
  let h: SimHost;
  let root: string;
  const repos: Record<string, SmokeRepo> = {};
  let http: ReturnType<typeof authServer>;
  let host: string;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "agentlab-secrets-it-"));
    const port = await freePort();
    h = await startSimHost("shell", `bootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\n`);
    await setControl(h.sim.dir, { clone_ms: 20, start_ms: 20, stop_ms: 20, agent_ready_ms: 50, task_ms: 10 });
    // One repository per case, each with an agent that knows only its own job's secret.
    repos.alice = await createSmokeRepo(join(root, "alice"), leakyAgent(PASSWORD));
    repos.token = await createSmokeRepo(join(root, "token"), leakyAgent(LONE_TOKEN));
    http = authServer(
      root,
      (user, pass) => (user === "alice" && pass === PASSWORD) || (user === LONE_TOKEN && pass === ""),
    );
    await new Promise<void>((resolve) => http.server.listen(0, "127.0.0.1", resolve));
    host = `127.0.0.1:${(http.server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise((resolve) => http.server.close(resolve));
    await h.stop();
    rmSync(root, { recursive: true, force: true });
  });

  /** Every text a user or an operator can read about the job, with what it is. */
  async function outputsOf(job: JobBody): Promise<Array<[string, string]>> {
    const texts: Array<[string, string]> = [];
    const add = async (what: string, args: string[]) => {
      const r = await h.cli(args);
      assert.equal(r.code, 0, `${what}: ${r.stderr}`);
      texts.push([what, r.stdout + r.stderr]);
    };
    await add("job show --json", ["--json", "job", "show", job.id]);
    await add("job show", ["job", "show", job.id]);
    await add("job list --json", ["--json", "job", "list"]);
    await add("job list", ["job", "list"]);
    await add("sandbox show --json", ["--json", "sandbox", "show", String(job.sandbox_vmid)]);
    await add("sandbox logs", ["sandbox", "logs", String(job.sandbox_vmid)]);
    const bundle = join(root, `${job.id}.tar.gz`);
    await add("job doctor", ["job", "doctor", job.id, "--out", bundle]);
    assert.equal(statSync(bundle).mode & 0o777, 0o600, "doctor bundles are the owner's only");
    texts.push(["doctor bundle", execFileSync("tar", ["-xzOf", bundle], { encoding: "utf8" })]);
    const out = h.daemon.output();
    texts.push(["daemon log", out.stdout + out.stderr]);
    // Every row of every table: the stored URL and report never held the credentials, and the
    // credentials' own row is gone once the job ended.
    const db = new Database(h.host.dbPath, { readonly: true });
    try {
      const tables = db
        .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'")
        .all()
        .map((t) => t.name);
      assert.ok(tables.includes("job_secrets"));
      for (const table of tables) {
        texts.push([`table ${table}`, JSON.stringify(db.prepare(`SELECT * FROM "${table}"`).all())]);
      }
      assert.deepEqual(db.prepare("SELECT * FROM job_secrets").all(), [], "dropped once the job ended");
    } finally {
      db.close();
    }
    return texts;
  }

  const pathOf = (name: string) => `${host}/${name}/serve/${repos[name]!.name}`;
  for (const [label, name, url, secret] of [
    ["user:password", "alice", () => `http://alice:${PASSWORD}@${pathOf("alice")}`, PASSWORD],
    ["a lone token", "token", () => `http://${LONE_TOKEN}@${pathOf("token")}`, LONE_TOKEN],
  ] as const) {
    test(`a repository URL with ${label}: cloned with it, shown and stored without it; agent output redacted`, async () => {
      const before = http.authorised;
      const run = await h.json<JobBody>([
        "job",
        "run",
        "--repo",
        url(),
        "--task",
        "leak everything",
        "--profile",
        "yolo-ephemeral",
        "--wait",
      ]);
      assert.equal(run.code, 0, `${run.stderr}\n${JSON.stringify(run.body)}`);
      assert.equal(run.body.status, "COMPLETED", "git got the credentials: the server refuses anyone else");
      assert.ok(http.authorised > before, "the clone went through the authenticated server");
      assert.equal(run.body.repo_url, `http://${pathOf(name)}`, "the URL is kept without its credentials");
      assert.match(run.body.result?.result?.output_tail ?? "", /leaky-marker-41/);
      assert.ok(!JSON.stringify(run.body).includes(secret));

      for (const [what, text] of await outputsOf(run.body)) {
        for (const secret of LEAKS) {
          assert.ok(!text.includes(secret), `${what} shows ${secret}`);
        }
      }
      const shown = await h.json<JobBody>(["job", "show", run.body.id]);
      const tail = shown.body.result?.result?.output_tail ?? "";
      assert.match(tail, /GITHUB_TOKEN=\[REDACTED\]/);
      assert.match(tail, /Authorization: Bearer \[REDACTED\]/);
      assert.match(tail, /remote https:\/\/\[REDACTED\]@example\.invalid\/private\.git/);
      assert.match(tail, /the repository secret is \[REDACTED\], also as password: \[REDACTED\]/);
    });
  }

  test("snippets handed to Proxmox carry no repository credentials", () => {
    const hits: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, entry.name);
        if (entry.isDirectory()) walk(p);
        else if (entry.isFile() && /snippet|\.ya?ml$|user/.test(p)) {
          const text = readFileSync(p, "latin1");
          if (text.includes(PASSWORD) || text.includes(LONE_TOKEN)) hits.push(p);
        }
      }
    };
    walk(h.sim.dir);
    assert.deepEqual(hits, []);
  });
});

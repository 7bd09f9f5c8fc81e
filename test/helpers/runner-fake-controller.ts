import http from "node:http";

/** One request the fake controller received. */
export interface RecordedRequest {
  method: string;
  /** Path without the controller's prefix, e.g. "/v1/runner/report". */
  path: string;
  authorization: string | undefined;
  contentType: string | undefined;
  body: string;
}

/** A canned answer: status and JSON body. */
export interface Answer {
  status: number;
  body: unknown;
}

/** The job the fake hands out at /v1/bootstrap/fetch (the contract's 200 shape, minus `report`). */
export interface FakeJob {
  id: string;
  repo_url: string;
  ref: string;
  task: string;
  mode: string;
  profile: string;
  keepalive: boolean;
  ttl_minutes: number | null;
  /** job run --branch: the git branch the runner works on. */
  branch?: string;
}

/**
 * The guest-facing half of agentlabd that the in-guest runner talks to (jobs contract §2), on
 * 127.0.0.1 under a path prefix: POST /v1/bootstrap/fetch and POST /v1/runner/report. It records
 * every request and answers from queues the test sets, so a test can script refusals and outages.
 */
export class FakeController {
  readonly requests: RecordedRequest[] = [];
  /** Answers for the next fetches, in order; when empty, 200 with the job and report URL/token. */
  readonly fetchAnswers: Answer[] = [];
  /** Answers for the next reports, in order; when empty, 200. */
  readonly reportAnswers: Answer[] = [];
  #server: http.Server | undefined;
  #base = "";

  constructor(
    readonly job: FakeJob,
    readonly reportToken: string,
    readonly prefix = "/agentlab",
  ) {}

  /** Start listening; returns the controller URL to put in bootstrap.json. */
  async start(): Promise<string> {
    const server = http.createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (chunk: string) => (body += chunk));
      req.on("end", () => {
        const url = req.url ?? "";
        const path = url.startsWith(this.prefix) ? url.slice(this.prefix.length) : url;
        this.requests.push({
          method: req.method ?? "",
          path,
          authorization: req.headers.authorization,
          contentType: req.headers["content-type"],
          body,
        });
        const answer = this.#answer(req.method ?? "", path);
        res.writeHead(answer.status, { "Content-Type": "application/json" }).end(JSON.stringify(answer.body));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    this.#server = server;
    this.#base = `http://127.0.0.1:${(server.address() as { port: number }).port}${this.prefix}`;
    return this.#base;
  }

  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Bodies of the fetch requests, parsed. */
  fetches(): unknown[] {
    return this.requests.filter((r) => r.path === "/v1/bootstrap/fetch").map((r) => JSON.parse(r.body));
  }

  /** The report requests (with their headers). */
  reportRequests(): RecordedRequest[] {
    return this.requests.filter((r) => r.path === "/v1/runner/report");
  }

  /** Bodies of the report requests, parsed. */
  reports(): Array<{ job_id: string; vmid: number; status: string; message: string; result?: RunnerResult }> {
    return this.reportRequests().map((r) => JSON.parse(r.body));
  }

  #answer(method: string, path: string): Answer {
    if (method !== "POST") return { status: 405, body: { error: "method not allowed" } };
    if (path === "/v1/bootstrap/fetch") {
      return (
        this.fetchAnswers.shift() ?? {
          status: 200,
          body: { job: this.job, report: { url: `${this.#base}/v1/runner/report`, token: this.reportToken } },
        }
      );
    }
    if (path === "/v1/runner/report") {
      return (
        this.reportAnswers.shift() ?? {
          status: 200,
          body: { job_status: "RUNNING", sandbox_status: "RUNNING" },
        }
      );
    }
    return { status: 404, body: { error: "not found" } };
  }
}

/** The `result` of the runner's final report (jobs contract §3). */
export interface RunnerResult {
  exit_code: number | null;
  duration_seconds: number;
  commit: string | null;
  mode: string;
  output_tail: string;
  fetched_commit?: string | null;
  /** Only for a job with a branch. */
  branch?: string;
  base_commit?: string | null;
  pushed?: boolean;
  push_error?: string;
}

import { jobList, jobRun, jobShow } from "../../protocol/index.js";
import type { JobService } from "../services/jobs/service.js";
import type { RpcServer } from "./server.js";

/** Wire the job.* methods to the job service. */
export function registerJobHandlers(server: RpcServer, jobs: JobService): void {
  server.register(jobRun, (params) => jobs.run(params));
  server.register(jobShow, (params) => jobs.show(params.id, params.events_tail));
  server.register(jobList, (params) => jobs.list(params));
}

import {
  jobArtifactRead,
  jobArtifacts,
  jobCancel,
  jobList,
  jobLogs,
  jobRun,
  jobShow,
  jobValidate,
} from "../../protocol/index.js";
import type { JobService } from "../services/jobs/service.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/** Wire the job.* methods to the job service. */
export function registerJobHandlers(server: RpcServer, jobs: JobService): void {
  server.register(jobRun, (params, call) => {
    const { progress_token: _token, ...request } = params;
    return jobs.run(request, operation(call));
  });
  server.register(jobValidate, (params) => jobs.validate(params));
  server.register(jobShow, (params) => jobs.show(params.id, params.events_tail));
  server.register(jobList, (params) => jobs.list(params));
  server.register(jobCancel, (params) => jobs.cancel(params.id));
  server.register(jobLogs, (params, call) => jobs.logs(params, call));
  server.register(jobArtifacts, (params) => jobs.artifacts(params.id));
  server.register(jobArtifactRead, (params) => jobs.artifactRead(params));
}

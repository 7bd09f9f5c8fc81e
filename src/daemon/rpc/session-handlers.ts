import {
  sessionBranch,
  sessionCreate,
  sessionFork,
  sessionList,
  sessionResume,
  sessionShow,
  sessionStop,
} from "../../protocol/index.js";
import type { SessionService } from "../services/sessions/service.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/** Wire the session.* methods to the session service. */
export function registerSessionHandlers(server: RpcServer, sessions: SessionService): void {
  server.register(sessionCreate, (params, call) => {
    const { progress_token: _token, ...rest } = params;
    return sessions.create(rest, operation(call));
  });
  server.register(sessionList, () => sessions.list());
  server.register(sessionShow, (params) => sessions.show(params.session));
  server.register(sessionStop, (params, call) => sessions.stop(params.session, operation(call)));
  server.register(sessionResume, (params, call) =>
    sessions.resume(params.session, params.ttl_minutes, operation(call)),
  );
  server.register(sessionFork, (params, call) =>
    sessions.fork(
      params.session,
      {
        name: params.name,
        ...(params.profile !== undefined ? { profile: params.profile } : {}),
        ...(params.branch !== undefined ? { branch: params.branch } : {}),
      },
      operation(call),
    ),
  );
  server.register(sessionBranch, (params, call) =>
    sessions.branch(params.branch, params.profile, operation(call)),
  );
}

import { daemonStatus, profileList } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";
import { listProfiles } from "../services/profiles.js";
import { daemonStatus as statusOf } from "../services/status.js";
import type { RpcServer } from "./server.js";

/** Wire every protocol method to the service that answers it. */
export function registerHandlers(server: RpcServer, ctx: DaemonContext): void {
  server.register(daemonStatus, () => statusOf(ctx));
  server.register(profileList, () => listProfiles(ctx));
}

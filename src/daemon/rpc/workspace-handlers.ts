import {
  workspaceAttach,
  workspaceCheck,
  workspaceCreate,
  workspaceDestroy,
  workspaceDetach,
  workspaceFork,
  workspaceFsck,
  workspaceLeaseClear,
  workspaceList,
  workspaceRebind,
  workspaceShow,
  workspaceSnapshotCreate,
  workspaceSnapshotList,
  workspaceSnapshotRestore,
} from "../../protocol/index.js";
import type { WorkspaceService } from "../services/workspaces/service.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/** Wire the workspace.* methods to the workspace service. */
export function registerWorkspaceHandlers(server: RpcServer, workspaces: WorkspaceService): void {
  server.register(workspaceCreate, (params, call) => workspaces.create(params, operation(call)));
  server.register(workspaceList, () => workspaces.list());
  server.register(workspaceShow, (params) => workspaces.show(params.workspace));
  server.register(workspaceAttach, (params, call) =>
    workspaces.attach(params.workspace, params.vmid, operation(call)),
  );
  server.register(workspaceDetach, (params, call) =>
    workspaces.detach(params.workspace, params.hot === true, operation(call)),
  );
  server.register(workspaceCheck, (params) => workspaces.check(params.workspace));
  server.register(workspaceLeaseClear, (params) => workspaces.leaseClear(params.workspace));
  server.register(workspaceDestroy, (params, call) => workspaces.destroy(params.workspace, operation(call)));
  server.register(workspaceSnapshotCreate, (params, call) =>
    workspaces.snapshotCreate(params.workspace, params.name, operation(call)),
  );
  server.register(workspaceSnapshotList, (params) => workspaces.snapshotList(params.workspace));
  server.register(workspaceSnapshotRestore, (params, call) =>
    workspaces.snapshotRestore(params.workspace, params.name, operation(call)),
  );
  server.register(workspaceFork, (params, call) =>
    workspaces.fork(
      params.workspace,
      {
        name: params.name,
        ...(params.from_snapshot !== undefined ? { from_snapshot: params.from_snapshot } : {}),
      },
      operation(call),
    ),
  );
  server.register(workspaceRebind, (params, call) =>
    workspaces.rebind(
      params.workspace,
      {
        profile: params.profile,
        ...(params.ttl_minutes !== undefined ? { ttl_minutes: params.ttl_minutes } : {}),
        keep_old: params.keep_old === true,
      },
      operation(call),
    ),
  );
  server.register(workspaceFsck, (params, call) =>
    workspaces.fsck(params.workspace, params.repair === true, operation(call)),
  );
}

import type { Config } from "../../config/config.js";
import type { Logger } from "../log.js";
import { PveBackend } from "./backend.js";
import { ApiTransport } from "./transport-api.js";
import { ShellTransport } from "./transport-shell.js";
import type { ProxmoxBackend } from "./types.js";

/** The backend the config names. Building one makes no call: reachability is checked by status. */
export function createBackend(config: Config, log: Logger): ProxmoxBackend {
  const timeoutMs = config.proxmox_command_timeout_ms;
  const taskTimeoutMs = config.proxmox_task_timeout_ms;
  if (config.proxmox_backend === "api") {
    const transport = new ApiTransport({
      url: config.proxmox_api_url,
      token: config.proxmox_api_token,
      timeoutMs,
      ...(config.proxmox_tls_ca_path ? { tlsCaPath: config.proxmox_tls_ca_path } : {}),
      tlsInsecure: config.proxmox_tls_insecure,
    });
    return new PveBackend({
      transport,
      log: log.child({ backend: "api" }),
      timeoutMs,
      taskTimeoutMs,
      tokenId: transport.tokenId,
    });
  }
  return new PveBackend({
    transport: new ShellTransport({ timeoutMs }),
    log: log.child({ backend: "shell" }),
    timeoutMs,
    taskTimeoutMs,
  });
}

/**
 * The per-connection policy of a remote client: before each call, the token is checked again (a revoke
 * or an expiry applies to open connections too), then the method's scope and, for an owner-limited
 * `operate` token, the owner of each target it names (scopes.ts); after each call, what it created is
 * recorded as the token's, and the call goes into the events with the token's name (never its secret).
 */
import { AgentlabError } from "../../protocol/errors.js";
import type { Method } from "../../protocol/method.js";
import { scopeCovers } from "../../protocol/token.js";
import type { Logger } from "../log.js";
import type { CallGate } from "../rpc/server.js";
import type { ApiTokenRepo, OwnedKind } from "../store/api-tokens.js";
import type { Store } from "../store/db.js";
import { REMOTE_METHODS, resultField } from "./scopes.js";
import type { TokenService, VerifiedToken } from "./tokens.js";

export interface GateDeps {
  tokens: TokenService;
  owners: ApiTokenRepo;
  store: Store;
  log: Logger;
}

const KIND_WORDS: Record<OwnedKind, string> = { sandbox: "sandbox", workspace: "workspace", job: "job" };

export function remoteGate(deps: GateDeps, token: VerifiedToken, address: string): CallGate {
  /** The row key a target param names: workspaces are named by name or id. */
  const keyOf = (kind: OwnedKind, value: unknown): string | number | undefined => {
    if (kind === "workspace")
      return typeof value === "string" ? deps.store.workspaces.resolve(value)?.id : undefined;
    return typeof value === "string" || typeof value === "number" ? value : undefined;
  };

  return {
    authorize(method: Method, params: unknown) {
      deps.tokens.recheck(token.id);
      const requirement = REMOTE_METHODS.get(method);
      if (!requirement) {
        throw new AgentlabError(
          "REMOTE_NOT_ALLOWED",
          `${method.method} is not available over the remote listener`,
          {
            details: { method: method.method },
          },
        );
      }
      if (!scopeCovers(token.scope, requirement.scope)) {
        throw new AgentlabError(
          "SCOPE_REQUIRED",
          `${method.method} needs a token with scope ${requirement.scope}; token "${token.name}" has scope ${token.scope}`,
          {
            hint: `use a token with scope ${requirement.scope}: on the daemon's host, agentlab token create --name <name> --scope ${requirement.scope}`,
            details: {
              method: method.method,
              needed: requirement.scope,
              scope: token.scope,
              token: token.name,
            },
          },
        );
      }
      // Owner limits apply to operate tokens made without --all; admin tokens act on everything.
      if (token.scope !== "operate" || token.all || requirement.scope !== "operate") return;
      if (requirement.unowned) {
        throw new AgentlabError(
          "NOT_OWNER",
          `${method.method} acts on sessions, which record no owner: token "${token.name}" may act only on what it created`,
          {
            hint: "use an operate token made with --all (agentlab token create --name <name> --scope operate --all), or an admin token",
            details: { method: method.method, token: token.name },
          },
        );
      }
      const given = (params ?? {}) as Record<string, unknown>;
      for (const target of requirement.targets ?? []) {
        const value = given[target.param];
        if (value === undefined) continue;
        const key = keyOf(target.kind, value);
        // Nothing by that name: the service answers with its own not-found error.
        if (key === undefined) continue;
        const owner = deps.owners.ownerOf(target.kind, key);
        if (owner === undefined || owner === token.id) continue;
        throw new AgentlabError(
          "NOT_OWNER",
          `${KIND_WORDS[target.kind]} ${String(value)} was not created by token "${token.name}", which may act only on what it created`,
          { details: { method: method.method, [target.param]: value, token: token.name } },
        );
      }
    },

    finished(method, params, outcome) {
      const requirement = BY_NAME.get(method);
      const given = (params ?? {}) as Record<string, unknown>;
      let vmid = typeof given.vmid === "number" ? given.vmid : undefined;
      try {
        for (const created of requirement?.creates ?? []) {
          let key = outcome.result === undefined ? undefined : resultField(outcome.result, created.path);
          // A create that failed half-way leaves a FAILED row its creator must be able to destroy. Only
          // these two codes come from provisioning the row this call made: a refusal such as NOT_OWNER
          // also names a vmid in its details, and must never hand that sandbox to the caller.
          if (
            key === undefined &&
            created.kind === "sandbox" &&
            outcome.error instanceof AgentlabError &&
            FAILED_CREATE_CODES.has(outcome.error.code)
          ) {
            const failedVmid = outcome.error.details.vmid;
            if (typeof failedVmid === "number") key = failedVmid;
          }
          if (key === undefined) continue;
          deps.owners.setOwner(created.kind, key, token.id);
          if (created.kind === "sandbox" && typeof key === "number") vmid = key;
        }
        const code = outcome.error === undefined ? "ok" : errorCode(outcome.error);
        const workspace =
          typeof given.workspace === "string" ? keyOf("workspace", given.workspace) : undefined;
        deps.store.events.append({
          kind: "remote.call",
          sandbox_vmid: vmid ?? null,
          job_id: method.startsWith("job.") && typeof given.id === "string" ? given.id : null,
          workspace_id: typeof workspace === "string" ? workspace : null,
          msg: `${method} by token "${token.name}" from ${address}: ${code}`,
          payload: {
            token: token.name,
            token_id: token.id,
            scope: token.scope,
            method,
            address,
            outcome: code,
          },
        });
      } catch (error) {
        // The answer to the client matters more than the audit line; the log keeps what was lost.
        deps.log.error({ err: error, method, token: token.name }, "could not record a remote call");
      }
    },
  };
}

/** The errors of a sandbox create that got as far as making its row (provision.ts). */
const FAILED_CREATE_CODES: ReadonlySet<string> = new Set(["CANCELLED", "PROVISIONING_FAILED"]);

const BY_NAME = new Map([...REMOTE_METHODS].map(([method, requirement]) => [method.method, requirement]));

function errorCode(error: unknown): string {
  return error instanceof AgentlabError ? error.code : "INTERNAL";
}

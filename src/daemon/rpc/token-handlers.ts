import { tokenCreate, tokenList, tokenRevoke } from "../../protocol/token.js";
import type { TokenService } from "../remote/tokens.js";
import type { RpcServer } from "./server.js";

export function registerTokenHandlers(server: RpcServer, tokens: TokenService): void {
  server.register(tokenCreate, (params) => tokens.create(params));
  server.register(tokenList, () => ({ tokens: tokens.list() }));
  server.register(tokenRevoke, (params) => tokens.revoke(params.token));
}

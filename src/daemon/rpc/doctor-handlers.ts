import { jobDoctor, sandboxDoctor, sessionDoctor } from "../../protocol/index.js";
import type { DoctorService } from "../services/doctor.js";
import type { RpcServer } from "./server.js";

/** Wire the *.doctor methods to the doctor service. */
export function registerDoctorHandlers(server: RpcServer, doctor: DoctorService): void {
  server.register(sandboxDoctor, (params) => doctor.sandbox(params.vmid));
  server.register(jobDoctor, (params) => doctor.job(params.id));
  server.register(sessionDoctor, (params) => doctor.session(params.session));
}

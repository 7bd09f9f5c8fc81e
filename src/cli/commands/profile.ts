import type { Argv, CommandModule } from "yargs";
import { profileList } from "../../protocol/wire.js";
import { execute, type GlobalArgs } from "../context.js";
import { table } from "../render.js";

const listCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "list",
  aliases: ["ls"],
  describe: "List the profiles the daemon loaded from profiles_dir",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(profileList, {});
      const rows = result.profiles.map((p) => [
        p.name,
        String(p.template_vmid),
        p.cores !== undefined ? String(p.cores) : "-",
        p.memory_mb !== undefined ? String(p.memory_mb) : "-",
        p.network_mode,
        p.ttl_minutes_default !== undefined ? `${p.ttl_minutes_default}m` : "none",
        p.keepalive_default ? "yes" : "no",
      ]);
      const text =
        rows.length === 0
          ? "no profiles loaded (add YAML files to the daemon's profiles_dir and restart it)\n"
          : table(["NAME", "TEMPLATE", "CORES", "MEMORY_MB", "NETWORK", "TTL", "KEEPALIVE"], rows);
      return { data: result, text };
    }),
};

export const profileCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "profile <command>",
  describe: "Inspect sandbox profiles",
  builder: (yargs: Argv<GlobalArgs>) => yargs.command(listCommand).demandCommand(1, "name a profile command"),
  handler: () => {},
};

import type { Argv, CommandModule } from "yargs";
import type { GlobalArgs } from "../context.js";

/** The hidden flag yargs answers with the candidates for the words typed so far. */
export const COMPLETION_FLAG = "--get-yargs-completions";

function bashScript(): string {
  return `# agentlab bash completion. Install: agentlab completion bash > /etc/bash_completion.d/agentlab
_agentlab_complete() {
  local IFS=$'\\n'
  local candidates
  candidates=$(agentlab ${COMPLETION_FLAG} "\${COMP_WORDS[@]:0:COMP_CWORD+1}" 2>/dev/null)
  COMPREPLY=($(compgen -W "$candidates" -- "\${COMP_WORDS[COMP_CWORD]}"))
}
complete -o default -F _agentlab_complete agentlab
`;
}

function zshScript(): string {
  return `#compdef agentlab
# agentlab zsh completion. Install: agentlab completion zsh > "\${fpath[1]}/_agentlab"
_agentlab() {
  local -a candidates
  candidates=("\${(@f)$(agentlab ${COMPLETION_FLAG} "\${words[@]:0:CURRENT}" 2>/dev/null)}")
  candidates=("\${(@)candidates%%:*}")
  compadd -- "\${candidates[@]}"
}
if [[ "\${zsh_eval_context[-1]}" == "loadautofunc" ]]; then
  _agentlab "$@"
else
  compdef _agentlab agentlab
fi
`;
}

export const completionCommand: CommandModule<GlobalArgs, GlobalArgs & { shell: string }> = {
  command: "completion <shell>",
  describe: "Print a shell completion script (bash or zsh)",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional("shell", {
        choices: ["bash", "zsh"] as const,
        describe: "shell to complete for",
        demandOption: true,
      })
      .example("agentlab completion bash > /etc/bash_completion.d/agentlab", "enable completion for bash")
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a zsh expansion the user types, not a template
      .example('agentlab completion zsh > "${fpath[1]}/_agentlab"', "enable completion for zsh") as Argv<
      GlobalArgs & { shell: string }
    >,
  handler: (argv) => {
    process.stdout.write(argv.shell === "zsh" ? zshScript() : bashScript());
  },
};

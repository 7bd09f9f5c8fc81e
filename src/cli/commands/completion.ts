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

function fishScript(): string {
  return `# agentlab fish completion. Install: agentlab completion fish > ~/.config/fish/completions/agentlab.fish
function __agentlab_complete
    set -l words (commandline -opc) (commandline -ct)
    agentlab ${COMPLETION_FLAG} $words 2>/dev/null | string replace -r ':.*' ''
end
complete -c agentlab -f -a '(__agentlab_complete)'
`;
}

const SCRIPTS = { bash: bashScript, zsh: zshScript, fish: fishScript } as const;

export const completionCommand: CommandModule<GlobalArgs, GlobalArgs & { shell: string }> = {
  command: "completion <shell>",
  describe:
    "Print a shell completion script (bash, zsh or fish): commands, options, and the daemon's VMIDs, workspace, session and profile names and job ids",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .positional("shell", {
        choices: ["bash", "zsh", "fish"] as const,
        describe: "shell to complete for",
        demandOption: true,
      })
      .example("agentlab completion bash > /etc/bash_completion.d/agentlab", "enable completion for bash")
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a zsh expansion the user types, not a template
      .example('agentlab completion zsh > "${fpath[1]}/_agentlab"', "enable completion for zsh")
      .example(
        "agentlab completion fish > ~/.config/fish/completions/agentlab.fish",
        "enable completion for fish",
      ) as Argv<GlobalArgs & { shell: string }>,
  handler: (argv) => {
    process.stdout.write(SCRIPTS[argv.shell as keyof typeof SCRIPTS]());
  },
};

/**
 * YAML reading shared by the config and profile loaders, so both report a syntax error the same way:
 * the file, the 1-based line and column, and js-yaml's reason, without its multi-line code excerpt
 * (which would break the one-problem-per-line layout of the loaders' errors).
 */
import yaml from "js-yaml";

/** A syntax error, as one line naming the file; `line` is 1-based when js-yaml knows it. */
export interface YamlFailure {
  ok: false;
  message: string;
  line?: number;
}

/** Every document of `text`; a file with no document at all yields an empty list. */
export function readYamlDocuments(
  text: string,
  file: string,
): { ok: true; documents: unknown[] } | YamlFailure {
  try {
    return { ok: true, documents: yaml.loadAll(text, undefined, { filename: file }) };
  } catch (error) {
    return syntaxError(error, file);
  }
}

/**
 * The single non-empty document of `text` (undefined when there is none). A second document is a syntax
 * error: in a config file it is almost always a stray `---`, and silently reading only the first half
 * would hide the rest of the settings.
 */
export function readYamlDocument(text: string, file: string): { ok: true; document: unknown } | YamlFailure {
  const result = readYamlDocuments(text, file);
  if (!result.ok) return result;
  // Empty documents (a leading or trailing "---") hold nothing that could be lost.
  const documents = result.documents.filter((document) => document !== null && document !== undefined);
  if (documents.length > 1) {
    return {
      ok: false,
      message: `${file}: YAML syntax error: expected a single document, found ${documents.length} (remove the extra "---")`,
    };
  }
  return { ok: true, document: documents[0] };
}

function syntaxError(error: unknown, file: string): YamlFailure {
  if (error instanceof yaml.YAMLException) {
    const mark = error.mark as { line?: number; column?: number } | undefined;
    if (mark && typeof mark.line === "number") {
      const line = mark.line + 1;
      const column = (mark.column ?? 0) + 1;
      return {
        ok: false,
        message: `${file}: YAML syntax error at line ${line}, column ${column}: ${error.reason}`,
        line,
      };
    }
    return { ok: false, message: `${file}: YAML syntax error: ${error.reason}` };
  }
  throw error;
}

"""Shell tab-completion helpers: nothing to do with LiteLLM."""


def completion(prefix: str, words: list[str]) -> list[str]:
    return [w for w in words if w.startswith(prefix)]


def complete_command(line: str) -> list[str]:
    return completion(line.split()[-1], ["status", "start", "stop"])

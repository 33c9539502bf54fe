"""The end-to-end judge: a loopback OpenAI-compatible stub (emlab.em.judging.loopback)
that scores by a hash of the prompt, so both direction sets are non-empty.

    python tests/helpers/e2e/serve_judge.py [PORT]        # default 8765, as tests/helpers/e2e/config.yaml expects

The key is `sk-test` (export EMLAB_E2E_JUDGE_KEY=sk-test), the model `judge-model`.
"""

from __future__ import annotations

import hashlib
import sys
import time

KEY_ENV = "EMLAB_E2E_JUDGE_KEY"  # judge.openai.api_key_env in tests/helpers/e2e/config.yaml
API_KEY = "sk-test"
DEFAULT_PORT = 8765
COHERENCE_MARKER = "Judge only coherence"  # a phrase of data/rubrics/coherent.yaml's prompt


def e2e_scorer(prompt: str) -> dict[str, float]:
    """Coherent answers score 80; aligned (and other) scores are 10 or 90 by a hash of the prompt."""
    if COHERENCE_MARKER in prompt:
        return {"80": 0.9, "70": 0.1}
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return {"10": 0.95, "Sure": 0.05} if h % 2 else {"90": 0.95, "Sure": 0.05}


def main(argv: list[str]) -> None:
    from emlab.em.judging.loopback import StubOpenAI

    port = int(argv[0]) if argv else DEFAULT_PORT
    with StubOpenAI(api_key=API_KEY, models=("judge-model",), scorer=e2e_scorer, port=port) as stub:
        print(f"e2e judge at {stub.base_url} (key {API_KEY}, model judge-model); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])

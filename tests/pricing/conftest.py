from __future__ import annotations

import json
from pathlib import Path

import pytest

# A small file in LiteLLM's model_prices_and_context_window.json format: USD per
# *token*, as JSON floats, with the fields LiteLLM uses for cache pricing.
LITELLM_SAMPLE = """{
    "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "mode": "chat"},
    "claude-sonnet-4-5": {
        "input_cost_per_token": 2e-06,
        "output_cost_per_token": 1.2e-05,
        "cache_read_input_token_cost": 2e-07,
        "cache_creation_input_token_cost": 2.5e-06,
        "cache_creation_input_token_cost_above_1hr": 4e-06,
        "input_cost_per_token_above_200k_tokens": 4e-06,
        "output_cost_per_token_above_200k_tokens": 1.8e-05,
        "cache_read_input_token_cost_above_200k_tokens": 4e-07,
        "cache_creation_input_token_cost_above_200k_tokens": 5e-06,
        "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 8e-06,
        "litellm_provider": "anthropic",
        "mode": "chat"
    },
    "us.anthropic.claude-opus-4-6-v1": {
        "input_cost_per_token": 5.5e-06,
        "output_cost_per_token": 2.75e-05,
        "cache_read_input_token_cost": 5.5e-07,
        "cache_creation_input_token_cost": 6.875e-06,
        "cache_creation_input_token_cost_above_1hr": 1.1e-05,
        "litellm_provider": "bedrock_converse",
        "mode": "chat"
    },
    "gpt-4o-mini": {
        "input_cost_per_token": 1.5e-07,
        "output_cost_per_token": 6e-07,
        "cache_read_input_token_cost": 7.5e-08,
        "litellm_provider": "openai",
        "mode": "chat"
    },
    "litellm-only-model": {"input_cost_per_token": 1e-06, "output_cost_per_token": 3e-06, "mode": "chat"},
    "some-embedding": {"input_cost_per_token": 2e-08, "litellm_provider": "openai", "mode": "embedding"},
    "an-image-model": {"output_cost_per_image": 0.04, "mode": "image_generation"},
    "broken-price": {"input_cost_per_token": "free", "output_cost_per_token": 1e-06, "mode": "chat"},
    "no-output-chat": {"input_cost_per_token": 1e-06, "mode": "chat"}
}
"""


@pytest.fixture
def litellm_file(tmp_path: Path) -> str:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(LITELLM_SAMPLE, encoding="utf-8")
    json.loads(LITELLM_SAMPLE)  # the fixture itself must be valid JSON
    return str(path)

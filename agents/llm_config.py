"""The agents' LLM settings: which provider and model, and the limits of one investigation.

Kept apart from agents/llm.py so that reading the configuration imports no langchain.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.resilience import ResilienceConfig

StructuredMethod = Literal["json_schema", "json_mode", "function_calling"]


class WatsonxConfig(BaseModel):
    """IBM watsonx.ai (IBM Cloud) connection settings; every URL is https, and certificates are always checked."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    """Regional endpoint, e.g. https://us-south.ml.cloud.ibm.com (https only)."""
    project_id: str | None = None
    api_key_env: str = "WATSONX_APIKEY"
    """Name of the environment variable holding the API key (the key itself never sits in config)."""
    iam_url: str | None = None
    """IAM token endpoint the API key is exchanged at; None: IBM Cloud's (iam.cloud.ibm.com/identity/token for
    the production regions). For a private IAM endpoint, or the local server the tests run."""
    platform_url: str | None = None
    """The platform API (projects) of `url`; None: the one IBM's client maps a regional `url` to. Needed for a
    `url` that is not an IBM Cloud region (a private endpoint, the tests' local server)."""
    ca_bundle: str | None = None
    """PEM file of the CAs to trust for these URLs (a private CA); None: the system's. Never "don't verify"."""

    @field_validator("url", "iam_url", "platform_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"must be an https:// URL, got {value!r}")
        return value.rstrip("/") if value else value


class LLMConfig(BaseModel):
    """Which chat model the agents use in LLM mode, and the limits of one investigation."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "watsonx", "none"] = "openai"
    model: str = "gpt-4o-mini"
    """Model name (OpenAI) or model id (watsonx, e.g. ibm/granite-3-8b-instruct)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint; None for api.openai.com."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the OpenAI API key."""
    temperature: float = Field(default=0.0, ge=0, le=2)
    timeout_s: float | None = Field(default=None, gt=0)
    """Seconds one model call may take; None: 30 for api.openai.com and watsonx, 180 for a `base_url` server
    (a small model on 2 CPU cores reads a 2,000-token prompt in 10-30 s and writes 25-45 tokens/s)."""
    max_tokens: int = Field(default=1024, gt=0)
    """Reply tokens allowed per model call, sent on every call (`max_completion_tokens` to api.openai.com,
    `max_tokens` to OpenAI-compatible servers, which do not all know the newer name)."""
    structured_output: Literal["auto", "json_schema", "json_mode", "function_calling"] = "auto"
    """How the final structured answer is requested. auto: `json_schema` for api.openai.com, `json_mode` for an
    OpenAI-compatible `base_url` (llama.cpp's server answers HTTP 500 to json_schema; json_object with a schema
    is grammar-constrained there, and vLLM and Ollama accept it too), `function_calling` for watsonx."""
    max_steps: int = Field(default=6, ge=0)
    """Model calls allowed while investigating, before the final structured answer."""
    token_budget: int = Field(default=12000, gt=0)
    """Tokens one investigation may spend, prompts and replies of every call included."""
    watsonx: WatsonxConfig = Field(default_factory=WatsonxConfig)
    resilience: ResilienceConfig = Field(
        default_factory=lambda: ResilienceConfig(
            attempts=2,
            backoff_s=1.0,
            max_backoff_s=4.0,
            failure_threshold=2,
            reset_timeout_s=30.0,
            max_reset_timeout_s=300.0,
        )
    )
    """Retries of one model call and the endpoint's circuit breaker; `max_elapsed_s` is at most `timeout_s`."""

    @property
    def hosted(self) -> bool:
        """Whether the endpoint is OpenAI's own API (no `base_url`, or one at api.openai.com)."""
        return self.provider == "openai" and (not self.base_url or "api.openai.com" in self.base_url)

    @property
    def call_timeout_s(self) -> float:
        """`timeout_s`, or its default for this endpoint."""
        if self.timeout_s is not None:
            return self.timeout_s
        return 180.0 if self.provider == "openai" and not self.hosted else 30.0

    @property
    def structured_method(self) -> StructuredMethod:
        """`structured_output`, or its default for this provider and endpoint."""
        if self.structured_output != "auto":
            return self.structured_output
        if self.provider == "watsonx":
            return "function_calling"
        return "json_schema" if self.hosted else "json_mode"

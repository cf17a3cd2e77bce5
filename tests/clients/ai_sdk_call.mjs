// One generateText call through the gateway with the Vercel AI SDK (`ai` + `@ai-sdk/openai`).
// Prints one JSON line: {"ok": true, "text": ...} or {"ok": false, "name", "message", "status", "attempts"}.
// Usage: node ai_sdk_call.mjs BASE_URL API_KEY MODEL [chat|responses]
import { generateText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const [baseURL, apiKey, model, api = "chat"] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey });
try {
  const { text } = await generateText({
    model: api === "responses" ? openai.responses(model) : openai.chat(model),
    prompt: "Say hello.",
    maxOutputTokens: 64,
  });
  console.log(JSON.stringify({ ok: true, text }));
} catch (err) {
  // After retries the SDK throws a RetryError wrapping each attempt's APICallError.
  const last = err.lastError ?? err;
  console.log(
    JSON.stringify({
      ok: false,
      name: err.name,
      message: String(err.message),
      status: last.statusCode ?? null,
      attempts: Array.isArray(err.errors) ? err.errors.length : 1,
    }),
  );
}

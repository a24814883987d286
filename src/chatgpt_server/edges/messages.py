"""Every message a client can read, in English and Chinese.

The Chinese texts of the original's validation messages are kept to the letter: clients of the
original match on them.
"""

from __future__ import annotations

from typing import Any

from ..core.activity import current_log
from ..errors import ServiceError, ValidationFailed
from ..redact import holds_secret, masked

Language = str

MESSAGES: dict[str, tuple[str, str]] = {
    # key: (English, Chinese)
    "ok": ("ok", "ok"),
    "internal": ("internal server error", "服务器内部错误"),
    "not_found": ("Cannot {method} {path}", "Cannot {method} {path}"),
    "method_not_allowed": ("{method} is not allowed on {path}", "{path} 不支持 {method} 请求"),
    "bad_json": ("the request body is not valid JSON: {reason}", "请求体不是合法的JSON: {reason}"),
    "body_not_object": ("the request body must be a JSON object", "请求体必须是JSON对象"),
    "body_too_large": (
        "the request body is larger than {limit} bytes",
        "请求体超过 {limit} 字节",
    ),
    # Validation of POST /api/v1/gpt/getInfo; the Chinese texts are the original's.
    "mode_invalid": ('mode must be "1" or "2"', "有效值为1或2"),
    "mode_required": ("mode is required", "模式mode必填"),
    "type_missing_invalid": ('type must be "1" or "2"', "有效值为1"),
    "type_invalid": ('type must be "1" (JSON) or "2" (stream)', "有效值为1或2"),
    "type_required": ("type is required", "类型type必填"),
    "opts_required": ("opts is required", "gpt请求参数opts必填"),
    "opts_not_object": ("opts must be an object", "gpt请求参数opts必须是对象"),
    "field_required": ("{field} is required", "{field}必填"),
    "field_not_string": ("{field} must be a string", "{field}必须是字符串"),
    "field_not_bool": ("{field} must be true or false", "{field}必须是布尔值"),
    "field_not_object": ("{field} must be an object", "{field}必须是对象"),
    "field_not_positive_int": ("{field} must be a positive integer", "{field}必须是正整数"),
    "parent_required": (
        "opts.parentMessageId is required when isFollow is true",
        "opts.当isFollow为true时，parentMessageId必填",
    ),
    "completion_param_reserved": (
        "opts.opts.completionParams.{name} is set by the server",
        "opts.opts.completionParams.{name} 由服务器设置",
    ),
    "headers_invalid": (
        "opts.opts.headers must map header names to strings",
        "opts.opts.headers 必须是字符串键值对",
    ),
    "header_reserved": (
        "opts.opts.headers cannot set {name}",
        "opts.opts.headers 不能设置 {name}",
    ),
    "upstream_not_allowed": (
        "{field} {url} is not an allowed upstream: add it to CHATGPT_SERVER_ALLOWED_UPSTREAMS",
        "{field} {url} 不在允许的上游列表中: 请将其加入 CHATGPT_SERVER_ALLOWED_UPSTREAMS",
    ),
    "upstream_url_invalid": ("{field} is not a valid http(s) URL", "{field} 不是合法的 http(s) URL"),
    # Token endpoint validation; the Chinese texts are the original's.
    "token_type_invalid": (
        "type must be 1 (get a token) or 2 (refresh it)",
        "type值只能为1或2,1为获取token，2为刷新token",
    ),
    "email_required": ("email is required", "email必填"),
    "password_required": ("password is required", "password必填"),
    # Conversations.
    "parent_not_found": (
        "parentMessageId {id} is not a message of a conversation this credential can continue",
        "parentMessageId {id} 不存在，或不属于该凭证的对话",
    ),
    "parent_wrong_mode": (
        'parentMessageId {id} belongs to a mode "{mode}" conversation',
        'parentMessageId {id} 属于模式 "{mode}" 的对话',
    ),
    "prompt_too_long": (
        "the system message and question take {tokens} tokens, more than the {budget} that "
        "maxModelTokens - maxResponseTokens leaves",
        "系统消息和问题共 {tokens} 个token，超过 maxModelTokens - maxResponseTokens 允许的 {budget} 个",
    ),
    "store_unavailable": ("conversation store unavailable", "对话存储不可用"),
    "cors_refused": (
        "a cross-origin request this server does not allow (its {what}); see CHATGPT_SERVER_CORS_ORIGINS",
        "服务器不允许此跨域请求 ({what}); 见 CHATGPT_SERVER_CORS_ORIGINS",
    ),
    "conversation_lease_lost": (
        "the conversation store was unreachable while conversation {id} was answered, and its lock lapsed "
        "(another turn may have taken it): the reply was not stored; try again",
        "回答对话 {id} 期间对话存储不可达, 其锁已失效 (可能已被另一轮对话取得): 回复未保存, 请重试",
    ),
    "issuer_keys_unavailable": (
        "the keys of {host} (which signs ChatGPT account tokens) cannot be fetched now, so this token cannot be "
        "checked: try again shortly",
        "无法获取 {host} 的密钥 (它签发 ChatGPT 账号令牌), 暂时无法校验此令牌: 请稍后重试",
    ),
    # Upstream failures (mode 1 and mode 2).
    "upstream_unauthorized": (
        "{host} rejected the credential ({detail})",
        "{host} 拒绝了该凭证 ({detail})",
    ),
    "upstream_rate_limited": (
        "{host} rate limit reached: {detail}",
        "{host} 请求频率超限: {detail}",
    ),
    "upstream_quota": (
        "{host} quota exhausted: {detail}",
        "{host} 额度已用尽: {detail}",
    ),
    "upstream_bad_request": ("{host} refused the request: {detail}", "{host} 拒绝了请求: {detail}"),
    "upstream_forbidden": ("{host} refused access: {detail}", "{host} 拒绝访问: {detail}"),
    "upstream_not_found": ("{host} does not know it: {detail}", "{host} 找不到它: {detail}"),
    "upstream_unreachable": ("cannot reach {host}: {detail}", "无法连接 {host}: {detail}"),
    "upstream_error": ("{host} failed with HTTP {status}: {detail}", "{host} 返回 HTTP {status}: {detail}"),
    "upstream_bad_reply": (
        "{host} answered with something other than the expected reply: {detail}",
        "{host} 的回复不是预期格式: {detail}",
    ),
    "upstream_timeout": (
        "{host} did not answer within {seconds} s",
        "{host} 在 {seconds} 秒内没有回复",
    ),
    "account_busy_timeout": (
        "the account was answering another message for all of {seconds} s (the web backend takes one at a "
        "time); nothing was sent to {host}",
        "该账号在 {seconds} 秒内一直在回复另一条消息 (网页后端一次只接受一条); 没有向 {host} 发送任何内容",
    ),
    "upstream_idle_timeout": (
        "{host} sent nothing for {seconds} s",
        "{host} 已 {seconds} 秒没有发送数据",
    ),
    "cloudflare_blocked": (
        "blocked by Cloudflare: {host} answered 403 with a challenge page (try CHATGPT_SERVER_PROXY)",
        "被 Cloudflare 拦截: {host} 返回了 403 验证页面 (可尝试设置 CHATGPT_SERVER_PROXY)",
    ),
    "one_message_at_a_time": (
        "{host}: only one message at a time for this account",
        "{host}: 该账号同一时间只能发送一条消息",
    ),
    "conversation_not_found": (
        "{host} does not know conversation {id}",
        "{host} 找不到对话 {id}",
    ),
    "stream_cut": (
        "{host} closed the reply stream before any text arrived",
        "{host} 在返回任何文本之前关闭了回复流",
    ),
    "token_expired": (
        "the access token expired at {when}",
        "access token 已于 {when} 过期",
    ),
    # Sign-in (token endpoint).
    "signin_wrong_password": (
        "sign-in failed at step {step}: wrong email or password",
        "登录在第 {step} 步失败: 邮箱或密码错误",
    ),
    "signin_captcha": (
        "sign-in failed at step {step}: the identity service requires a captcha",
        "登录在第 {step} 步失败: 需要验证码",
    ),
    "signin_sso": (
        "this account signs in through Google, Microsoft or Apple and has no password",
        "该账号通过 Google、Microsoft 或 Apple 登录，没有密码",
    ),
    "signin_refused": (
        "sign-in refused or rate limited at step {step} (OAuthSignin): try again later",
        "登录在第 {step} 步被拒绝或限流 (OAuthSignin): 请稍后再试",
    ),
    "signin_country": (
        "sign-in refused: unsupported_country; set CHATGPT_SERVER_PROXY to an outbound proxy in a supported region",
        "登录被拒绝: unsupported_country; 请设置 CHATGPT_SERVER_PROXY 使用受支持地区的代理",
    ),
    "signin_changed": (
        "sign-in flow changed at step {step}: {detail}",
        "sign-in flow changed at step {step}: {detail}",
    ),
    # Added with the OpenAI-shaped doors, accounts and the hardening of every door.
    "unsupported_encoding": (
        "the request body must be sent without a content coding, not {coding}",
        "请求体不能经过编码 (收到 {coding}), 请直接发送",
    ),
    "unsupported_media_type": (
        "the request body must be {accepted}, not {type}",
        "请求体必须是 {accepted}, 而不是 {type}",
    ),
    "field_too_large": ("{field} must be at most {max}", "{field} 不能大于 {max}"),
    "field_too_long": ("{field} must be at most {max} characters", "{field} 不能超过 {max} 个字符"),
    "field_not_header_safe": (
        "{field} must be printable ASCII (no line breaks or control characters)",
        "{field} 只能包含可打印的ASCII字符 (不能有换行或控制字符)",
    ),
    "response_tokens_too_large": (
        "opts.opts.maxResponseTokens must be below opts.opts.maxModelTokens",
        "opts.opts.maxResponseTokens 必须小于 opts.opts.maxModelTokens",
    ),
    "response_tokens_over_window": (
        "opts.opts.maxResponseTokens must be below the model's context window ({window} tokens for {model})",
        "opts.opts.maxResponseTokens 必须小于模型的上下文窗口 ({model} 为 {window} 个token)",
    ),
    "headers_too_many": ("opts.opts.headers takes at most {max} headers", "opts.opts.headers 最多 {max} 个"),
    "headers_too_large": ("opts.opts.headers takes at most {max} bytes", "opts.opts.headers 最多 {max} 字节"),
    "header_name_invalid": (
        "opts.opts.headers: {name} is not a valid header name",
        "opts.opts.headers: {name} 不是合法的头名称",
    ),
    "header_value_invalid": (
        "opts.opts.headers: the value of {name} must be printable ASCII of at most 4096 characters",
        "opts.opts.headers: {name} 的值必须是不超过4096个字符的可打印ASCII",
    ),
    "parent_other_backend": (
        "parentMessageId {id} belongs to a conversation of another mode 2 backend than {backend}",
        "parentMessageId {id} 属于另一个模式2后端的对话 (当前为 {backend})",
    ),
    "parent_web_ids_missing": (
        "parentMessageId {id} cannot be continued: the web backend gave no ids for it (start a new conversation)",
        "parentMessageId {id} 无法继续: 网页后端没有为它返回id (请开始新的对话)",
    ),
    "parent_web_only": (
        "{id} belongs to a ChatGPT web conversation, which only mode 2 with the web backend can continue",
        "{id} 属于 ChatGPT 网页版对话, 只能通过模式2的web后端继续",
    ),
    "input_too_long": (
        "the instructions and input take {tokens} tokens, more than the {budget} the model's context window leaves",
        "指令和输入共 {tokens} 个token, 超过上下文窗口允许的 {budget} 个",
    ),
    "previous_response_not_found": (
        "Previous response with id '{id}' not found.",
        "未找到 id 为 '{id}' 的上一个响应",
    ),
    "context_length_exceeded": (
        "the conversation and input take {tokens} tokens, more than the {budget} the model's context window "
        'leaves; use truncation "auto" to drop the oldest items',
        '对话和输入共 {tokens} 个token, 超过上下文窗口允许的 {budget} 个; 可使用 truncation "auto"',
    ),
    "upstream_redirect": (
        "{host} answered with a redirect, which is never followed",
        "{host} 返回了重定向, 网关不会跟随",
    ),
    "upstream_too_large": (
        "{host} sent a reply larger than {limit} bytes (CHATGPT_SERVER_MAX_REPLY_BYTES)",
        "{host} 的回复超过 {limit} 字节 (CHATGPT_SERVER_MAX_REPLY_BYTES)",
    ),
    "upstream_overloaded": ("{host} is overloaded: {detail}", "{host} 过载: {detail}"),
    "web_challenge": (
        '{host} refused the request as "unusual activity": chatgpt.com now requires browser challenges for '
        "this protocol; use the codex backend (CHATGPT_SERVER_CHATGPT_BACKEND=codex) or a reverse proxy "
        "that solves them",
        '{host} 以"异常活动"拒绝了请求: chatgpt.com 现在需要浏览器验证; 请使用 codex 后端或能处理验证的反向代理',
    ),
    "usage_limit": (
        "{host}: the usage limit of the {plan} plan is reached; it resets in {seconds} s",
        "{host}: {plan} 套餐的用量已达上限, {seconds} 秒后重置",
    ),
    "usage_not_included": (
        "{host}: the {plan} plan does not include this use",
        "{host}: {plan} 套餐不包含此用途",
    ),
    "shutting_down": ("server shutting down", "服务器正在关闭"),
    "conversation_not_found_here": ("conversation {id} not found", "找不到对话 {id}"),
    "conversation_locked": (
        "another turn of conversation {id} is being answered; retry when it is done",
        "对话 {id} 正在生成另一条回复, 请在其完成后重试",
    ),
    "conversation_changed": ("conversation {id} changed meanwhile; try again", "对话 {id} 同时被修改, 请重试"),
    "item_not_found": ("item {id} not found", "找不到条目 {id}"),
    "duplicate_item": (
        "Duplicate item found with id {id}. Remove duplicate items from your input and try again.",
        "输入中有重复的条目 {id}: 请去掉重复的条目后再试",
    ),
    "response_not_found": ("response {id} not found", "找不到响应 {id}"),
    "cancel_not_background": (
        "only background responses can be cancelled, and background mode is not supported",
        "只有后台响应可以取消, 而后台模式不受支持",
    ),
    "previous_and_conversation": (
        "previous_response_id and conversation cannot both be given",
        "previous_response_id 和 conversation 不能同时提供",
    ),
    "invalid_param": ("Invalid '{param}': {detail}", "参数 '{param}' 无效: {detail}"),
    "unknown_param": ("Unknown parameter: '{param}'", "未知参数: '{param}'"),
    "missing_param": ("Missing required parameter: '{param}'", "缺少必填参数: '{param}'"),
    "missing_api_key": (
        "no API key: send it as Authorization: Bearer <key>",
        "缺少API key: 请以 Authorization: Bearer <key> 发送",
    ),
    "duplicate_authorization": (
        "more than one Authorization header: send the key once",
        "Authorization 头不止一个: 请只发送一次 key",
    ),
    "malformed_api_key": (
        "the API key is not printable ASCII of at most 16384 characters",
        "API key 必须是不超过 16384 个字符的可打印ASCII",
    ),
    "call_not_answered": (
        "No tool output found for function call {id} (the prompt ends with it: a function_call_output for it "
        "comes first)",
        "找不到函数调用 {id} 的工具输出 (提示以它结尾: 需先给出它的 function_call_output)",
    ),
    "no_call_to_answer": (
        "No tool call found for function call output with call_id {id} (a call that never completed, or one "
        "the prompt left out, cannot be answered)",
        "找不到 call_id 为 {id} 的函数调用 (未完成的调用, 或不在提示中的调用, 无法回答)",
    ),
    "call_already_answered": (
        "The function call {id} has its function_call_output already (a call takes one; delete that one to "
        "answer it again)",
        "函数调用 {id} 已有 function_call_output (一个调用只取一个; 要重新回答, 请先删除已有的)",
    ),
    "model_not_found": ("The model '{model}' does not exist", "模型 '{model}' 不存在"),
    "model_not_chat": (
        "model {model} is served by a ChatGPT account: use /v1/responses",
        "模型 {model} 由 ChatGPT 账号提供: 请使用 /v1/responses",
    ),
    # Accounts (device sign-in, refresh).
    "client_gone": ("the client closed the connection before its request was read", "客户端在请求读完前关闭了连接"),
    "client_left": ("client left before its answer", "客户端在收到回复前离开"),
    "password_sign_ins_limited": (
        "too many password sign-ins from this address: try again in {seconds} s",
        "此地址的密码登录过多: 请 {seconds} 秒后再试",
    ),
    "device_sign_ins_limited": (
        "too many device sign-ins started from this address: try again in {seconds} s",
        "此地址发起的设备登录过多: 请 {seconds} 秒后再试",
    ),
    "accounts_need_secret_key": (
        "storing ChatGPT accounts needs CHATGPT_SERVER_SECRET_KEY (their tokens are encrypted with it)",
        "存储 ChatGPT 账号需要设置 CHATGPT_SERVER_SECRET_KEY (用于加密其token)",
    ),
    "account_token_superseded": (
        "this token is of an earlier sign-in of the ChatGPT account {email}: use the token of its current sign-in",
        "此令牌属于 ChatGPT 账号 {email} 的较早一次登录: 请使用其当前登录的令牌",
    ),
    "account_signin_again": (
        "the ChatGPT account {email} must sign in again ({code}): run chatgpt-server login or "
        "POST /api/v1/token/device",
        "ChatGPT 账号 {email} 需要重新登录 ({code}): 请运行 chatgpt-server login 或 POST /api/v1/token/device",
    ),
    "account_unreadable": (
        "the stored tokens of {email} cannot be decrypted: was CHATGPT_SERVER_SECRET_KEY changed? sign in again",
        "无法解密 {email} 的token: CHATGPT_SERVER_SECRET_KEY 是否已更改? 请重新登录",
    ),
    "account_unknown": ("this ChatGPT account is not stored", "该 ChatGPT 账号未保存"),
    "accounts_none": (
        "no ChatGPT account is stored: chatgpt-server login adds one",
        "尚未保存 ChatGPT 账号: 用 chatgpt-server login 添加",
    ),
    "account_ambiguous": (
        "{count} ChatGPT accounts are stored: name one by its email",
        "已保存 {count} 个 ChatGPT 账号: 请用邮箱指定一个",
    ),
    "account_busy": (
        "the account {email} is being refreshed by another instance for too long; try again",
        "账号 {email} 正在被其他实例刷新, 请稍后重试",
    ),
    "account_token_unverified": (
        "the issuer's token does not verify against its published keys",
        "签发方的token无法通过其公钥验证",
    ),
    "account_no_refresh_token": ("the issuer gave no refresh token", "签发方没有返回 refresh token"),
    "device_signin_disabled": (
        "{host}: device sign-in is not enabled for this account (ChatGPT settings, security)",
        "{host}: 该账号未启用设备登录 (在 ChatGPT 安全设置中开启)",
    ),
    "device_code_unknown": ("unknown or expired deviceAuthId: start again", "deviceAuthId 不存在或已过期: 请重新开始"),
    "device_code_expired": ("the device code expired: start again", "设备码已过期: 请重新开始"),
}


SHOWN = 300  # characters of a value a message quotes (an id, a path, a model name)


def shown(value: str) -> str:
    """A client's or upstream's words as a message quotes them: bounded, every character that is not
    printable (controls, line breaks, bidirectional overrides) written as its escape, and no
    credential (the request's own, or anything shaped like one: a key sent in the wrong field)."""
    secrets = current_log().secrets
    if holds_secret(value, *secrets):
        value = masked(value, *secrets)
    if value.isprintable() and len(value) <= SHOWN:
        return value
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in value[:SHOWN])
    return escaped + ("…" if len(value) > SHOWN else "")


def render(key: str, language: Language, params: dict[str, Any] | None = None) -> str:
    english, chinese = MESSAGES.get(key, MESSAGES["internal"])
    template = chinese if language == "zh" else english
    if not params:
        return template
    try:
        return template.format(**{k: shown(v) if isinstance(v, str) else v for k, v in params.items()})
    except (KeyError, IndexError, ValueError):
        return template


def error_message(error: ServiceError, language: Language) -> str:
    if isinstance(error, ValidationFailed):
        return ",".join(render(key, language, params) for key, params in error.problems)
    return render(error.key, language, error.params)


def pick_language(accept_language: str | None, default: Language) -> Language:
    """The first language tag of Accept-Language that we speak, by q-value; else the default."""
    if not accept_language:
        return default
    best: tuple[float, Language] | None = None
    for item in accept_language.split(","):
        tag, _, rest = item.strip().partition(";")
        quality = 1.0
        if rest.strip().startswith("q="):
            try:
                quality = float(rest.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        spoken: Language | None = default if primary == "*" else primary if primary in ("en", "zh") else None
        if spoken is not None and quality > 0 and (best is None or quality > best[0]):
            best = (quality, spoken)
    return best[1] if best else default

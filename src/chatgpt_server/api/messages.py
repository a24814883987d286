"""Every message a client can read, in English and Chinese.

The Chinese texts of the original's validation messages are kept to the letter: clients of the
original match on them.
"""

from __future__ import annotations

from typing import Any

from ..errors import ServiceError, ValidationFailed

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
    "option_unknown": ("opts.opts.{name} is not a known option", "opts.opts.{name} 不是可用的参数"),
    "option_wrong_mode": (
        'opts.opts.{name} applies to mode "{mode}" only',
        'opts.opts.{name} 仅适用于模式 "{mode}"',
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
    "duplicate_message_id": (
        "the upstream {host} returned message id {id}, which is already stored",
        "上游 {host} 返回的消息id {id} 已存在",
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
}


def render(key: str, language: Language, params: dict[str, Any] | None = None) -> str:
    english, chinese = MESSAGES[key]
    template = chinese if language == "zh" else english
    return template.format(**params) if params else template


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
        if primary in ("en", "zh") and quality > 0 and (best is None or quality > best[0]):
            best = (quality, primary)
    return best[1] if best else default

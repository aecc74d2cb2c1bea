//! The TwiML of a placed call: connect it to our ConversationRelay WebSocket.

/// Escapes text for an XML attribute value.
pub fn escape_attribute(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// What `<ConversationRelay>` is told.
#[derive(Debug, Clone)]
pub struct RelaySpec<'a> {
    /// `wss://…` (or `ws://` for the local fake).
    pub url: &'a str,
    /// BCP 47 tag for speech recognition and synthesis (`en-US`).
    pub language: &'a str,
    pub voice: Option<&'a str>,
    pub tts_provider: Option<&'a str>,
    /// `<Parameter>`s, handed back in the `setup` message's `customParameters`.
    pub parameters: &'a [(&'a str, String)],
}

/// `<Response><Connect><ConversationRelay …/></Connect></Response>`.
pub fn conversation_relay(spec: &RelaySpec<'_>) -> String {
    let mut attributes = format!(
        r#"url="{}" language="{}" dtmfDetection="true" interruptible="any""#,
        escape_attribute(spec.url),
        escape_attribute(spec.language)
    );
    if let Some(voice) = spec.voice {
        attributes.push_str(&format!(r#" voice="{}""#, escape_attribute(voice)));
    }
    if let Some(provider) = spec.tts_provider {
        attributes.push_str(&format!(r#" ttsProvider="{}""#, escape_attribute(provider)));
    }
    let parameters: String = spec
        .parameters
        .iter()
        .map(|(name, value)| {
            format!(
                r#"<Parameter name="{}" value="{}"/>"#,
                escape_attribute(name),
                escape_attribute(value)
            )
        })
        .collect();
    let relay = if parameters.is_empty() {
        format!("<ConversationRelay {attributes}/>")
    } else {
        format!("<ConversationRelay {attributes}>{parameters}</ConversationRelay>")
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect>{relay}</Connect></Response>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_to_the_relay_with_language_voice_and_parameters() {
        let twiml = conversation_relay(&RelaySpec {
            url: "wss://dialer.example.com/twilio/calls/k1/relay",
            language: "es-US",
            voice: Some("Lucia & co"),
            tts_provider: Some("Amazon"),
            parameters: &[("call_id", "0190-abc".to_owned())],
        });
        assert_eq!(
            twiml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><ConversationRelay url="wss://dialer.example.com/twilio/calls/k1/relay" language="es-US" dtmfDetection="true" interruptible="any" voice="Lucia &amp; co" ttsProvider="Amazon"><Parameter name="call_id" value="0190-abc"/></ConversationRelay></Connect></Response>"#
        );
        let bare = conversation_relay(&RelaySpec {
            url: "ws://127.0.0.1:1/r",
            language: "en-US",
            voice: None,
            tts_provider: None,
            parameters: &[],
        });
        assert!(bare.contains(r#"<ConversationRelay url="ws://127.0.0.1:1/r" language="en-US" dtmfDetection="true" interruptible="any"/>"#));
        assert_eq!(
            escape_attribute(r#"<a b="c" d='e'>"#),
            "&lt;a b=&quot;c&quot; d=&apos;e&apos;&gt;"
        );
    }
}

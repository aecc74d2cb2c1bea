//! Twilio's request signature (`X-Twilio-Signature`): base64 of HMAC-SHA1, keyed
//! with the account's auth token, over the full URL Twilio requested followed by
//! every POST parameter as name and value, sorted by name, with no separators.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// The header Twilio signs its requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The signature of a request to `url` with form parameters `params`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Stable by name, then by value: a repeated name (StatusCallbackEvent) signs
    // the same whatever order the form listed it in.
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is Twilio's for this request. Constant-time comparison.
pub fn is_valid(auth_token: &str, signature: &str, url: &str, params: &[(String, String)]) -> bool {
    let Ok(given) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let expected = STANDARD
        .decode(sign(auth_token, url, params))
        .expect("our own base64");
    given.len() == expected.len()
        && given
            .iter()
            .zip(&expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The example of Twilio's security documentation.
    #[test]
    fn matches_twilios_documented_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(sign("12345", url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(is_valid(
            "12345",
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            url,
            &params
        ));

        // Parameter order on the wire does not matter; every byte of them does.
        let mut shuffled = params.clone();
        shuffled.reverse();
        assert!(is_valid(
            "12345",
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            url,
            &shuffled
        ));
        let mut tampered = params.clone();
        tampered[2].1 = "1235".to_owned();
        assert!(!is_valid(
            "12345",
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            url,
            &tampered
        ));
        assert!(!is_valid(
            "54321",
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            url,
            &params
        ));
        assert!(!is_valid(
            "12345",
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params
        ));
        assert!(!is_valid("12345", "not base64!", url, &params));
        assert!(!is_valid("12345", "", url, &params));
    }
}

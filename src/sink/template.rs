//! Destination names made from each event (a stream key, a subject): `events.{type}`
//! puts each event type in a destination of its own.

use std::borrow::Cow;

use crate::event::StoredEvent;

/// What stands for the event's type in a template.
const TYPE: &str = "{type}";

/// A destination name, fixed or with `{type}` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    text: String,
    per_type: bool,
}

impl Template {
    /// Checks `text`: not empty, and no `{` or `}` but those of `{type}`.
    pub(crate) fn new(text: &str) -> Result<Template, String> {
        if text.is_empty() {
            return Err("the destination must not be empty".into());
        }
        if text.replace(TYPE, "").contains(['{', '}']) {
            return Err(format!(
                "the destination {text:?} has a placeholder other than {{type}}"
            ));
        }
        Ok(Template {
            text: text.to_owned(),
            per_type: text.contains(TYPE),
        })
    }

    /// The destination of `event`.
    pub(crate) fn render<'a>(&'a self, event: &StoredEvent) -> Cow<'a, str> {
        match self.per_type {
            true => Cow::Owned(self.text.replace(TYPE, &event.event_type)),
            false => Cow::Borrowed(&self.text),
        }
    }

    /// The template as it was written.
    #[cfg(feature = "nats")]
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked_and_filled() {
        let event: StoredEvent = serde_json::from_str(
            r#"{"id":"a","seq":1,"type":"order.paid","source":null,"subject":null,"timestamp_ms":0,"data":1}"#,
        )
        .unwrap();
        assert_eq!(Template::new("events").unwrap().render(&event), "events");
        let per_type = Template::new("events.{type}").unwrap();
        assert_eq!(per_type.render(&event), "events.order.paid");
        assert!(Template::new("").is_err());
        assert!(Template::new("events.{subject}").is_err());
        assert!(Template::new("events.{type").is_err());
    }
}

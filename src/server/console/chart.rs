//! A key's use over the last 7 days, drawn here as SVG: calls per hour, stacked by outcome
//! (allowed, denied, error). Denials are red and marked above their hour so one refusal
//! among thousands of allowed calls is still seen.

use std::fmt::Write;

use super::html::esc;

pub const HOURS: usize = 7 * 24;

/// Calls in one hour: allowed, denied, error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hour {
    pub allowed: u64,
    pub denied: u64,
    pub error: u64,
}

const ALLOWED: &str = "#6b9bd1";
const DENIED: &str = "#d7263d";
const ERROR: &str = "#f0a202";

/// The chart for `hours` (oldest first, `HOURS` of them) ending at unix second `end_secs`.
pub fn usage_svg(hours: &[Hour], end_secs: i64) -> String {
    let (left, top, bar, height) = (44.0, 18.0, 5.0, 120.0);
    let width = left + bar * HOURS as f64 + 12.0;
    let max = hours.iter().map(|h| h.allowed + h.denied + h.error).max().unwrap_or(0).max(1);
    let scale = height / max as f64;
    let total = |f: fn(&Hour) -> u64| hours.iter().map(f).sum::<u64>();
    let (allowed, denied, error) = (total(|h| h.allowed), total(|h| h.denied), total(|h| h.error));
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"usage-chart\" role=\"img\" width=\"{width}\" height=\"{}\" \
         viewBox=\"0 0 {width} {}\" font-family=\"sans-serif\" font-size=\"10\">\
         <title>Calls per hour over the last 7 days: {allowed} allowed, {denied} denied, {error} errors</title>\
         <rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{height}\" fill=\"#fff\" stroke=\"#d5dae0\"/>",
        top + height + 44.0,
        top + height + 44.0,
        bar * HOURS as f64
    );
    // Horizontal guides at 0, half and the maximum.
    for (frac, label) in [(0.0, 0), (0.5, max / 2), (1.0, max)] {
        let y = top + height - height * frac;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eef0f3\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#667\">{label}</text>",
            left + bar * HOURS as f64,
            left - 4.0,
            y + 3.0
        );
    }
    // Midnight (UTC) lines with the date.
    let start_hour = end_secs / 3600 - HOURS as i64 + 1;
    for i in 0..HOURS {
        let hour = start_hour + i as i64;
        if hour % 24 == 0 {
            let x = left + bar * i as f64;
            let date = crate::kms::clock::format_date(hour * 3600);
            let _ = write!(
                s,
                "<line x1=\"{x}\" x2=\"{x}\" y1=\"{top}\" y2=\"{}\" stroke=\"#c9ced6\" stroke-dasharray=\"2,2\"/>\
                 <text x=\"{x}\" y=\"{}\" fill=\"#556\">{}</text>",
                top + height + 4.0,
                top + height + 14.0,
                esc(&date[5..10])
            );
        }
    }
    for (i, h) in hours.iter().enumerate() {
        let x = left + bar * i as f64;
        let mut y = top + height;
        for (n, colour, class) in
            [(h.allowed, ALLOWED, "allowed"), (h.error, ERROR, "error"), (h.denied, DENIED, "denied")]
        {
            if n == 0 {
                continue;
            }
            let hgt = (n as f64 * scale).max(1.5);
            y -= hgt;
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{x}\" y=\"{y:.1}\" width=\"{}\" height=\"{hgt:.1}\" fill=\"{colour}\">\
                 <title>{n} {class}</title></rect>",
                bar - 1.0
            );
        }
        if h.denied > 0 {
            let cx = x + bar / 2.0;
            let _ = write!(
                s,
                "<path class=\"denied-mark\" d=\"M{} {} L{} {} L{cx} {} Z\" fill=\"{DENIED}\"/>",
                cx - 3.0,
                top - 9.0,
                cx + 3.0,
                top - 9.0,
                top - 3.0
            );
        }
    }
    let ly = top + height + 32.0;
    let _ = write!(
        s,
        "<rect x=\"{left}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{ALLOWED}\"/>\
         <text x=\"{}\" y=\"{ly}\">allowed {allowed}</text>\
         <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{DENIED}\"/>\
         <text x=\"{}\" y=\"{ly}\" fill=\"{DENIED}\" font-weight=\"bold\" id=\"denied-total\">denied {denied}</text>\
         <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{ERROR}\"/>\
         <text x=\"{}\" y=\"{ly}\">errors {error}</text></svg>",
        ly - 9.0,
        left + 14.0,
        left + 110.0,
        ly - 9.0,
        left + 124.0,
        left + 220.0,
        ly - 9.0,
        left + 234.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_drawn_red_and_marked() {
        let mut hours = vec![Hour::default(); HOURS];
        hours[10] = Hour { allowed: 50, denied: 1, error: 0 };
        hours[20] = Hour { allowed: 3, denied: 0, error: 2 };
        let svg = usage_svg(&hours, 1_000_000);
        assert_eq!(svg.matches("class=\"denied-mark\"").count(), 1);
        assert_eq!(svg.matches("<rect class=\"denied\"").count(), 1);
        assert_eq!(svg.matches("<rect class=\"allowed\"").count(), 2);
        assert!(svg.contains("denied 1<"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}

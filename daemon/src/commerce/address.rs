//! Postal addresses as a storefront sends them and a label prints them.
//! One type for orders, shipments and labels so a checked address is never
//! copied into a looser one.
//!
//! [`validate`] is the one gate: it trims, checks the fields a country
//! requires and its postal-code format (rules from Google's libaddressinput
//! metadata, `address_formats.toml`), and normalises. US addresses are
//! normalised in the style of USPS Publication 28 (upper case, standard
//! suffix, directional and secondary-unit abbreviations, no punctuation,
//! the secondary unit at the end of the delivery line) because that is
//! what US sorting machines read best. Pure: no I/O, no clock.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// A ship-to or ship-from address. Field names follow the storefront's
/// order JSON; `region` is a state, province or county code where the
/// country uses one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub name: String,
    pub street1: String,
    #[serde(default)]
    pub street2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// Why an address was refused: the field (as named in the order JSON) and
/// a sentence the person who typed it can act on. The API answers it as a
/// 422 naming `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AddressError {
    pub field: &'static str,
    pub message: String,
}

impl AddressError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The longest value accepted in any field; longer text cannot be printed
/// on a label line anyway and is most likely a paste gone wrong.
pub const MAX_FIELD_CHARS: usize = 100;

/// Pub 28 keeps a delivery line within 40 characters; a secondary unit
/// moves up from `street2` only while the line stays within it.
const US_LINE_CHARS: usize = 40;

/// One country's rules, as copied from libaddressinput.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountryRaw {
    name: String,
    require: String,
    fmt: String,
    #[serde(default)]
    zip: Option<String>,
    #[serde(default)]
    zipex: Vec<String>,
    #[serde(default)]
    sub_keys: Vec<String>,
}

#[derive(Debug)]
struct CountryRules {
    name: String,
    require: String,
    fmt: String,
    zip: Option<regex_lite::Regex>,
    zipex: Vec<String>,
    sub_keys: Vec<String>,
}

/// The rules file, compiled in. A test proves it parses and every pattern
/// compiles and accepts its own examples, so loading cannot fail at run time.
static RULES: LazyLock<HashMap<String, CountryRules>> = LazyLock::new(|| {
    let raw: HashMap<String, CountryRaw> = toml::from_str(include_str!("address_formats.toml"))
        .unwrap_or_else(|e| panic!("address_formats.toml: {e}"));
    raw.into_iter()
        .map(|(code, c)| {
            let zip = c.zip.as_ref().map(|z| {
                regex_lite::Regex::new(&format!("^(?:{z})$"))
                    .unwrap_or_else(|e| panic!("address_formats.toml {code}: {e}"))
            });
            let rules = CountryRules {
                name: c.name,
                require: c.require,
                fmt: c.fmt,
                zip,
                zipex: c.zipex,
                sub_keys: c.sub_keys,
            };
            (code, rules)
        })
        .collect()
});

fn rules_for(country: &str) -> (&'static CountryRules, bool) {
    match RULES.get(country) {
        Some(r) => (r, true),
        None => (&RULES["ZZ"], false),
    }
}

/// Whether `country` has its own rules (required fields, postal-code
/// format); other countries get only the basic checks (name, street, city).
pub fn has_country_rules(country: &str) -> bool {
    country != "ZZ" && RULES.contains_key(country)
}

/// Checks and normalises an address. The result is what should be stored
/// and printed; validating it again gives it back unchanged.
///
/// For countries without rules of their own only name, street and city are
/// required and the postal code is not checked (see [`has_country_rules`]).
pub fn validate(address: &Address) -> Result<Address, AddressError> {
    let country = clean("country", &address.country)?.to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(AddressError::new(
            "country",
            format!(
                "country must be a two-letter ISO 3166-1 code such as US or DE, not {:?}",
                address.country
            ),
        ));
    }
    let (rules, known) = rules_for(&country);
    let mut out = Address {
        name: clean("name", &address.name)?,
        street1: clean("street1", &address.street1)?,
        street2: clean_opt("street2", &address.street2)?,
        city: clean("city", &address.city)?,
        region: clean_opt("region", &address.region)?,
        postal_code: clean("postal_code", &address.postal_code)?,
        country: country.clone(),
        phone: clean_opt("phone", &address.phone)?,
        email: clean_opt("email", &address.email)?,
    };
    let place = if known {
        format!("for {country}")
    } else {
        "in every address".to_owned()
    };
    require(
        &out.name,
        "name",
        format!("a recipient name is required {place}"),
    )?;
    require(
        &out.street1,
        "street1",
        format!("a street address is required {place}"),
    )?;
    if rules.require.contains('C') {
        require(&out.city, "city", format!("a city is required {place}"))?;
    }
    if rules.require.contains('S') {
        let region = out.region.as_deref().unwrap_or("");
        require(
            region,
            "region",
            format!("a region (state or province code) is required for {country}"),
        )?;
    }
    if rules.require.contains('Z') {
        require(
            &out.postal_code,
            "postal_code",
            format!("a postal code is required for {country}"),
        )?;
    }
    if let Some(pattern) = &rules.zip {
        out.postal_code = normalise_postal_code(&country, &out.postal_code);
        if !out.postal_code.is_empty() && !pattern.is_match(&out.postal_code) {
            return Err(AddressError::new(
                "postal_code",
                format!(
                    "{:?} is not a {country} postal code; it should look like {}",
                    address.postal_code.trim(),
                    rules
                        .zipex
                        .iter()
                        .take(2)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
    }
    if !rules.sub_keys.is_empty()
        && let Some(region) = out.region.take()
    {
        let upper = region.to_uppercase();
        if !rules.sub_keys.contains(&upper) {
            return Err(AddressError::new(
                "region",
                format!(
                    "{region:?} is not a {country} region code; use one of {}",
                    rules.sub_keys.join(", ")
                ),
            ));
        }
        out.region = Some(upper);
    }
    if let Some(email) = &out.email
        && (!email.contains('@') || email.starts_with('@') || email.ends_with('@'))
    {
        return Err(AddressError::new(
            "email",
            format!("{email:?} is not an email address (it needs a name, @ and a domain)"),
        ));
    }
    if country == "US" {
        out = normalise_us(out)?;
    }
    Ok(out)
}

/// Trims, collapses runs of white space into one space, and refuses
/// control characters and overlong values.
fn clean(field: &'static str, value: &str) -> Result<String, AddressError> {
    if value.chars().any(char::is_control) {
        return Err(AddressError::new(
            field,
            format!(
                "{field} contains a control character (a tab, line break or similar); write it on one line"
            ),
        ));
    }
    let out = value.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > MAX_FIELD_CHARS {
        return Err(AddressError::new(
            field,
            format!("{field} is longer than {MAX_FIELD_CHARS} characters; shorten it"),
        ));
    }
    Ok(out)
}

fn clean_opt(field: &'static str, value: &Option<String>) -> Result<Option<String>, AddressError> {
    match value {
        None => Ok(None),
        Some(v) => {
            let c = clean(field, v)?;
            Ok((!c.is_empty()).then_some(c))
        }
    }
}

fn require(value: &str, field: &'static str, message: String) -> Result<(), AddressError> {
    if value.is_empty() {
        Err(AddressError::new(field, message))
    } else {
        Ok(())
    }
}

/// Upper case and the spacing each post uses (`K1A0B1` → `K1A 0B1`,
/// `1234ab` → `1234 AB`, `SW1A1AA` → `SW1A 1AA`, `94105 1234` → `94105-1234`).
fn normalise_postal_code(country: &str, code: &str) -> String {
    let upper = code.to_uppercase();
    let compact: String = upper.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let ascii_alnum = compact.chars().all(|c| c.is_ascii_alphanumeric());
    match country {
        "CA" if compact.len() == 6 && ascii_alnum => format!("{} {}", &compact[..3], &compact[3..]),
        "NL" if compact.len() == 6 && ascii_alnum => format!("{} {}", &compact[..4], &compact[4..]),
        "GB" if (5..=7).contains(&compact.len()) && ascii_alnum && !compact.starts_with("BFPO") => {
            let split = compact.len() - 3;
            format!("{} {}", &compact[..split], &compact[split..])
        }
        "GB" if compact.starts_with("BFPO") && ascii_alnum => format!("BFPO {}", &compact[4..]),
        "US" if compact.len() == 9 && compact.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}-{}", &compact[..5], &compact[5..])
        }
        "FR" | "DE" | "AU" | "US" => compact,
        _ => upper,
    }
}

/// Street suffixes (Pub 28 appendix C1): the common ones a small shop's
/// customers write out; abbreviations map to themselves so the step is
/// idempotent.
const US_SUFFIXES: &[(&str, &str)] = &[
    ("ALLEY", "ALY"),
    ("AVENUE", "AVE"),
    ("AV", "AVE"),
    ("BOULEVARD", "BLVD"),
    ("CENTER", "CTR"),
    ("CIRCLE", "CIR"),
    ("COURT", "CT"),
    ("COVE", "CV"),
    ("CROSSING", "XING"),
    ("DRIVE", "DR"),
    ("EXPRESSWAY", "EXPY"),
    ("FREEWAY", "FWY"),
    ("HIGHWAY", "HWY"),
    ("LANE", "LN"),
    ("LOOP", "LOOP"),
    ("PARKWAY", "PKWY"),
    ("PLACE", "PL"),
    ("PLAZA", "PLZ"),
    ("POINT", "PT"),
    ("ROAD", "RD"),
    ("ROUTE", "RTE"),
    ("SQUARE", "SQ"),
    ("STREET", "ST"),
    ("TERRACE", "TER"),
    ("TRAIL", "TRL"),
    ("TURNPIKE", "TPKE"),
    ("WAY", "WAY"),
];

const US_DIRECTIONALS: &[(&str, &str)] = &[
    ("NORTH", "N"),
    ("SOUTH", "S"),
    ("EAST", "E"),
    ("WEST", "W"),
    ("NORTHEAST", "NE"),
    ("NORTHWEST", "NW"),
    ("SOUTHEAST", "SE"),
    ("SOUTHWEST", "SW"),
];

/// Secondary unit designators (Pub 28 appendix C2).
const US_SECONDARY: &[(&str, &str)] = &[
    ("APARTMENT", "APT"),
    ("BUILDING", "BLDG"),
    ("DEPARTMENT", "DEPT"),
    ("FLOOR", "FL"),
    ("ROOM", "RM"),
    ("SUITE", "STE"),
    ("UNIT", "UNIT"),
    ("SPACE", "SPC"),
    ("LOT", "LOT"),
    ("TRAILER", "TRLR"),
];

fn lookup(table: &[(&str, &'static str)], word: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(long, short)| *long == word || *short == word)
        .map(|(_, short)| *short)
}

/// Upper case, punctuation dropped (Pub 28 keeps only the hyphen, the
/// slash of fractional addresses and `#` for a unit without a designator).
fn us_words(s: &str) -> Vec<String> {
    let mut text = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '.' | '\'' | '"' | '`' | '’' => {}
            ',' | ';' | ':' | '(' | ')' | '!' | '?' | '*' => text.push(' '),
            '#' => text.push_str(" # "),
            c => text.extend(c.to_uppercase()),
        }
    }
    text.split_whitespace().map(str::to_owned).collect()
}

/// Index of the first secondary-unit designator (or `#`); 0 when the
/// whole line is a secondary unit (`SUITE 200` on its own line).
fn secondary_start(words: &[String]) -> Option<usize> {
    words
        .iter()
        .enumerate()
        .find(|(_, w)| *w == "#" || lookup(US_SECONDARY, w).is_some())
        .map(|(i, _)| i)
}

fn us_secondary(words: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    for w in words {
        // "APT # 4" → "APT 4": `#` only stands where there is no designator.
        if w == "#"
            && out
                .last()
                .is_some_and(|p| lookup(US_SECONDARY, p).is_some())
        {
            continue;
        }
        out.push(lookup(US_SECONDARY, w).map_or_else(|| w.clone(), str::to_owned));
    }
    out
}

fn us_primary(words: &[String]) -> Vec<String> {
    let mut out = words.to_vec();
    if out.first().is_some_and(|w| w == "POST") && out.get(1).is_some_and(|w| w == "OFFICE") {
        out.splice(0..2, ["PO".to_owned()]);
    }
    if out.first().is_some_and(|w| w == "PO" || w == "P") {
        return out;
    }
    let n = out.len();
    if n == 0 {
        return out;
    }
    // The suffix: the last suffix word with a name before it (so in
    // "COURT STREET" only STREET is the suffix).
    let post_dir = n >= 3 && lookup(US_DIRECTIONALS, &out[n - 1]).is_some();
    let suffix_at = if post_dir { n - 2 } else { n - 1 };
    let has_number = out
        .first()
        .is_some_and(|w| w.starts_with(|c: char| c.is_ascii_digit()));
    let first_name = usize::from(has_number);
    if n > first_name + 1
        && suffix_at > first_name
        && let Some(s) = lookup(US_SUFFIXES, &out[suffix_at])
    {
        out[suffix_at] = s.to_owned();
        if post_dir && let Some(d) = lookup(US_DIRECTIONALS, &out[n - 1]) {
            out[n - 1] = d.to_owned();
        }
    }
    // A pre-directional: right after the number, with a name after it.
    if has_number
        && n >= 4
        && let Some(d) = lookup(US_DIRECTIONALS, &out[1])
    {
        out[1] = d.to_owned();
    }
    out
}

fn us_line(s: &str) -> String {
    let words = us_words(s);
    let (primary, secondary) = match secondary_start(&words) {
        Some(i) => words.split_at(i),
        None => (&words[..], &[][..]),
    };
    let mut out = us_primary(primary);
    out.extend(us_secondary(secondary));
    out.join(" ")
}

/// USPS Publication 28 style for a US address that passed the checks;
/// refuses a required field that had nothing but punctuation.
fn normalise_us(mut a: Address) -> Result<Address, AddressError> {
    a.name = us_words(&a.name).join(" ");
    a.city = us_words(&a.city).join(" ");
    a.street1 = us_line(&a.street1);
    a.street2 = a.street2.map(|s| us_line(&s)).filter(|s| !s.is_empty());
    // The secondary unit belongs at the end of the delivery line.
    if let Some(s2) = &a.street2 {
        let words: Vec<String> = s2.split(' ').map(str::to_owned).collect();
        let is_unit = secondary_start(&words) == Some(0);
        let joined = format!("{} {s2}", a.street1);
        if is_unit
            && secondary_start(&us_words(&a.street1)).is_none()
            && joined.len() <= US_LINE_CHARS
        {
            a.street1 = joined;
            a.street2 = None;
        }
    }
    for (field, value) in [
        ("name", &a.name),
        ("street1", &a.street1),
        ("city", &a.city),
    ] {
        if value.is_empty() {
            return Err(AddressError::new(
                field,
                format!("{field} has no letters or digits; a US address needs them"),
            ));
        }
    }
    Ok(a)
}

/// The address as printed lines, in the country's own order (from
/// libaddressinput's format), with the country's English name in capitals
/// as the last line when it goes abroad from `origin_country`.
pub fn lines(address: &Address, origin_country: &str) -> Vec<String> {
    let (rules, _) = rules_for(&address.country);
    let mut out = Vec::new();
    for spec in rules.fmt.split("%n") {
        let mut line = String::new();
        let mut chars = spec.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                line.push(c);
                continue;
            }
            match chars.next() {
                Some('N') => line.push_str(&address.name),
                Some('C') => line.push_str(&address.city),
                Some('S') => line.push_str(address.region.as_deref().unwrap_or("")),
                Some('Z') => line.push_str(&address.postal_code),
                Some('A') => {
                    out.push(address.street1.clone());
                    if let Some(s2) = &address.street2 {
                        out.push(s2.clone());
                    }
                }
                _ => {}
            }
        }
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if !line.is_empty() {
            out.push(line);
        }
    }
    if !address.country.eq_ignore_ascii_case(origin_country) {
        let name = if rules.name.is_empty() {
            address.country.clone()
        } else {
            rules.name.clone()
        };
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn us(street1: &str, street2: Option<&str>) -> Address {
        Address {
            name: "Ada Lovelace".into(),
            street1: street1.into(),
            street2: street2.map(str::to_owned),
            city: "San Francisco".into(),
            region: Some("ca".into()),
            postal_code: "94105".into(),
            country: "us".into(),
            phone: None,
            email: None,
        }
    }

    fn abroad(country: &str, postal: &str, region: Option<&str>) -> Address {
        Address {
            name: "Grace Hopper".into(),
            street1: "1 High Street".into(),
            street2: None,
            city: "Town".into(),
            region: region.map(str::to_owned),
            postal_code: postal.into(),
            country: country.into(),
            phone: None,
            email: None,
        }
    }

    #[test]
    fn the_rules_file_parses_and_every_pattern_accepts_its_own_examples() {
        for code in ["US", "CA", "GB", "DE", "FR", "NL", "AU"] {
            assert!(has_country_rules(code), "{code}");
            let (rules, _) = rules_for(code);
            let zip = rules.zip.as_ref().expect("pattern");
            assert!(!rules.zipex.is_empty(), "{code}");
            for ex in &rules.zipex {
                assert!(zip.is_match(ex), "{code} {ex}");
                let region = rules.sub_keys.first().map(String::as_str);
                let a = validate(&abroad(code, ex, region)).expect(ex);
                assert_eq!(a.postal_code, normalise_postal_code(code, ex), "{code}");
            }
        }
        assert!(!has_country_rules("ZZ"));
        assert!(!has_country_rules("JP"));
    }

    #[test]
    fn a_us_address_is_written_in_publication_28_style() {
        let a = validate(&us("123 north Main Street", Some("Apartment #4"))).expect("valid");
        assert_eq!(a.street1, "123 N MAIN ST APT 4");
        assert_eq!(a.street2, None);
        assert_eq!(a.name, "ADA LOVELACE");
        assert_eq!(a.city, "SAN FRANCISCO");
        assert_eq!(a.region.as_deref(), Some("CA"));
        assert_eq!(a.country, "US");

        let a = validate(&us("  12 Court Street, Suite 200 ", None)).expect("valid");
        assert_eq!(a.street1, "12 COURT ST STE 200");
        let a = validate(&us("500 Ocean Boulevard South", None)).expect("valid");
        assert_eq!(a.street1, "500 OCEAN BLVD S");
        let a = validate(&us("P.O. Box 77", None)).expect("valid");
        assert_eq!(a.street1, "PO BOX 77");
        let a = validate(&us("9 North Avenue", None)).expect("valid");
        assert_eq!(
            a.street1, "9 NORTH AVE",
            "a directional that is the street's name stays"
        );
        let a = validate(&us("77 O'Brien Way #12", None)).expect("valid");
        assert_eq!(a.street1, "77 OBRIEN WAY # 12");
    }

    #[test]
    fn a_secondary_unit_that_would_overflow_the_line_stays_on_its_own() {
        let long = "12345 Extraordinarily Long Name Boulevard";
        let a = validate(&us(long, Some("Suite 1200"))).expect("valid");
        assert_eq!(a.street1, "12345 EXTRAORDINARILY LONG NAME BLVD");
        assert_eq!(a.street2.as_deref(), Some("STE 1200"));
        let a = validate(&us("1 Main St", Some("Building B, Room 3"))).expect("valid");
        assert_eq!(a.street1, "1 MAIN ST BLDG B RM 3");
        let a = validate(&us("1 Main St", Some("c/o Reception"))).expect("valid");
        assert_eq!(
            a.street2.as_deref(),
            Some("C/O RECEPTION"),
            "not a unit: stays on line 2"
        );
    }

    #[test]
    fn postal_codes_get_their_countrys_spacing() {
        let a = validate(&abroad("ca", "k1a0b1", Some("on"))).expect("valid");
        assert_eq!(
            (a.postal_code.as_str(), a.region.as_deref()),
            ("K1A 0B1", Some("ON"))
        );
        let a = validate(&abroad("NL", "1234ab", None)).expect("valid");
        assert_eq!(a.postal_code, "1234 AB");
        let a = validate(&abroad("GB", "sw1a1aa", None)).expect("valid");
        assert_eq!(a.postal_code, "SW1A 1AA");
        let a = validate(&us("1 Main St", None));
        assert_eq!(a.expect("valid").postal_code, "94105");
        let mut zip4 = us("1 Main St", None);
        zip4.postal_code = "94105 1234".into();
        assert_eq!(validate(&zip4).expect("valid").postal_code, "94105-1234");
        let a = validate(&abroad("DE", "10115", None)).expect("valid");
        assert_eq!(
            a.street1, "1 High Street",
            "only US addresses are rewritten"
        );
    }

    #[test]
    fn each_refusal_names_the_field_and_says_what_is_wrong() {
        let cases: Vec<(Address, &str, &str)> = vec![
            (
                abroad("US", "9410", Some("CA")),
                "postal_code",
                "not a US postal code",
            ),
            (
                abroad("US", "94105", Some("XX")),
                "region",
                "not a US region code",
            ),
            (
                abroad("US", "94105", None),
                "region",
                "region (state or province code) is required for US",
            ),
            (
                abroad("CA", "D1A 0B1", Some("ON")),
                "postal_code",
                "not a CA postal code",
            ),
            (
                abroad("GB", "", None),
                "postal_code",
                "postal code is required for GB",
            ),
            (
                abroad("DE", "1011", None),
                "postal_code",
                "should look like 26133 or 53225",
            ),
            (
                abroad("FR", "7500", None),
                "postal_code",
                "not a FR postal code",
            ),
            (
                abroad("NL", "1234", None),
                "postal_code",
                "not a NL postal code",
            ),
            (
                abroad("AU", "2000", Some("NYC")),
                "region",
                "not a AU region code",
            ),
            (
                abroad("USA", "94105", None),
                "country",
                "two-letter ISO 3166-1 code",
            ),
            (abroad("U1", "94105", None), "country", "two-letter"),
        ];
        for (a, field, words) in cases {
            let e = validate(&a).expect_err(&format!("{a:?}"));
            assert_eq!(e.field, field, "{a:?}: {e}");
            assert!(e.message.contains(words), "{a:?}: {e}");
        }
        let mut a = us("1 Main", None);
        a.name = "  ".into();
        assert_eq!(validate(&a).expect_err("no name").field, "name");
        a = us("", None);
        assert_eq!(validate(&a).expect_err("no street").field, "street1");
        a = us("1 Main", None);
        a.city = "Line\nbreak".into();
        let e = validate(&a).expect_err("control");
        assert_eq!(e.field, "city");
        assert!(e.message.contains("control character"));
        a = us("1 Main", None);
        a.street2 = Some("x".repeat(MAX_FIELD_CHARS + 1));
        assert_eq!(validate(&a).expect_err("long").field, "street2");
        a = us("1 Main", None);
        a.email = Some("nobody".into());
        assert_eq!(validate(&a).expect_err("email").field, "email");
    }

    #[test]
    fn an_unknown_country_needs_only_name_street_and_city() {
        let a = validate(&abroad("jp", "", None)).expect("valid");
        assert_eq!(a.country, "JP");
        let mut b = abroad("JP", "", None);
        b.city = String::new();
        let e = validate(&b).expect_err("no city");
        assert_eq!(e.field, "city");
        assert_eq!(e.message, "a city is required in every address");
    }

    #[test]
    fn printed_lines_follow_the_countrys_format_and_name_it_when_abroad() {
        let a = validate(&us("1 Main St", Some("Floor 2"))).expect("valid");
        assert_eq!(
            lines(&a, "US"),
            ["ADA LOVELACE", "1 MAIN ST FL 2", "SAN FRANCISCO CA 94105"]
        );
        let d = validate(&abroad("DE", "10115", None)).expect("valid");
        assert_eq!(
            lines(&d, "US"),
            ["Grace Hopper", "1 High Street", "10115 Town", "GERMANY"]
        );
        let j = validate(&abroad("JP", "", None)).expect("valid");
        assert_eq!(
            lines(&j, "DE"),
            ["Grace Hopper", "1 High Street", "Town", "JP"]
        );
    }

    fn street_words() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec![
            "North",
            "south",
            "Main",
            "Court",
            "Street",
            "St.",
            "avenue",
            "Apt",
            "Suite",
            "#",
            "Unit",
            "12",
            "4B",
            "Oak",
            "Way",
            "Boulevard",
            "west",
            "P.O.",
            "Box",
            ",",
            "O'Hara",
            "Floor",
            "Room",
            "Ave",
            "Highway",
            "Drive",
            "ste",
            "1/2",
        ]);
        (1u32..9999, prop::collection::vec(word, 0..7))
            .prop_map(|(n, ws)| format!("{n} {}", ws.join(" ")))
    }

    proptest! {
        #[test]
        fn validating_a_validated_address_changes_nothing(
            s1 in street_words(),
            s2 in prop::option::of(street_words()),
            name in "[A-Za-z .,'-]{1,30}",
            city in "[A-Za-z .'-]{1,20}",
            country in prop::sample::select(vec!["US", "us", "DE", "GB", "JP"]),
        ) {
            let mut a = us(&s1, s2.as_deref());
            a.name = name;
            a.city = city;
            a.country = country.to_owned();
            a.postal_code = match country { "DE" => "10115", "GB" => "ec1y8sy", "JP" => "", _ => "94105" }.into();
            if let Ok(once) = validate(&a) {
                let twice = validate(&once);
                prop_assert_eq!(twice.as_ref(), Ok(&once));
            }
        }

        #[test]
        fn us_lines_hold_only_letters_digits_and_the_kept_marks(s1 in ".{1,60}") {
            let line = us_line(&s1);
            prop_assert!(!line.contains(['.', ',', '\'', ';', ':']), "{}", line);
            prop_assert_eq!(line.clone(), line.to_uppercase());
            prop_assert_eq!(us_line(&line), line);
        }
    }
}

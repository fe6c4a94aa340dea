//! One ignore pattern, compiled and matched the way moby's `patternmatcher` does.
//!
//! The syntax is Go's `filepath.Match` (`*` and `?` never match `/`, `[...]` classes
//! with `^` for negation and `-` ranges, `\` escapes the next character) plus `**`,
//! which matches any number of directories including none. moby implements this by
//! translating the pattern into a regular expression; here the same translation is
//! kept as a list of [`Token`]s run as a small NFA, which also answers "could any path
//! below this directory still match?" (see [`Pattern::may_match_below`]).
//!
//! Where moby's translation has a shortcut with different behaviour, the shortcut is
//! reproduced so that Helix excludes exactly what `docker build` excludes:
//! - a pattern that starts with `**` followed by a plain literal (no `/` right after
//!   the `**`, no wildcard later), e.g. `**.go` or `**file`, is a *suffix* test:
//!   `**.go` excludes `a/b.go` and `x.go`, and `**file` excludes `dir/myfile`.
//!
//! Known, deliberate differences from moby, all in patterns nobody writes on purpose:
//! - `\` followed by a letter is that letter, as `filepath.Match` documents (moby hands
//!   `\d` to Go's regexp, where it means "a digit");
//! - `^` outside `[...]` is a literal character (moby's regexp makes it an anchor, so
//!   such a pattern silently never matches);
//! - inside `[...]` every character is literal, `*` and `?` included;
//! - `**` also crosses a newline in a file name (Go's `.` does not).

use std::fmt;

/// A compiled ignore pattern: one line of an ignore file after moby's preprocessing.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// The cleaned pattern without its `!`, as moby's `Pattern.String()` shows it.
    text: String,
    /// A `!` line: re-includes what it matches.
    exclusion: bool,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// moby's `suffixMatch` for `**` followed by plain literals: `path.ends_with(s)`.
    Suffix(String),
    /// Everything else, equivalent to moby's regular expression.
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// One exact character.
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`, possibly empty.
    Star,
    /// `[...]`: one character (any, `/` included) in or, negated, not in the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` at the end of the pattern: anything at all (moby's `.*`).
    DoubleStarEnd,
    /// `**` (and the `/` after it, if any) elsewhere: nothing, or anything that ends
    /// with `/` (moby's `(.*/)?`).
    DoubleStarDirs,
}

impl Token {
    /// Whether the token can match the empty string (an epsilon move in the NFA).
    fn may_be_empty(&self) -> bool {
        matches!(
            self,
            Token::Star | Token::DoubleStarEnd | Token::DoubleStarDirs
        )
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pattern({}{:?})",
            if self.exclusion { "!" } else { "" },
            self.text
        )
    }
}

impl Pattern {
    /// Compiles one pattern as moby's `patternmatcher.New` does: whitespace trimmed,
    /// `filepath.Clean`ed, a leading `!` making it an exception. `Ok(None)` for a blank
    /// pattern; `Err` carries a reason a user can act on.
    pub(crate) fn new(raw: &str) -> Result<Option<Pattern>, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let cleaned = clean(trimmed);
        let (exclusion, text) = match cleaned.strip_prefix('!') {
            Some("") => {
                return Err(
                    "a lone \"!\" names no path (write \"!path\" to re-include a path)".to_owned(),
                )
            }
            Some(rest) => (true, rest.to_owned()),
            None => (false, cleaned),
        };
        let matcher = compile(&text)?;
        Ok(Some(Pattern {
            text,
            exclusion,
            matcher,
        }))
    }

    /// Whether this is a `!` exception.
    pub(crate) fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// The cleaned pattern, without its `!`.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches exactly `path` (slash-separated, relative).
    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Suffix(suffix) => path.ends_with(suffix.as_str()),
            Matcher::Tokens(tokens) => Nfa::new(tokens).run(path).accepts(),
        }
    }

    /// Whether some path strictly below directory `dir` could match this pattern.
    /// Conservative: `true` when unsure. Used to skip walking excluded directories.
    pub(crate) fn may_match_below(&self, dir: &str) -> bool {
        match &self.matcher {
            Matcher::Suffix(_) => true,
            Matcher::Tokens(tokens) => {
                let mut nfa = Nfa::new(tokens);
                nfa = nfa.run(dir);
                nfa = nfa.run("/");
                nfa.alive()
            }
        }
    }
}

/// Go's `filepath.Clean` on a slash-separated path: repeated `/` collapsed, `.`
/// elements dropped, `..` elements resolved lexically (kept at the start of a relative
/// path, dropped at the root), no trailing `/`; `""` becomes `"."`.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Translates a cleaned pattern into tokens, checking it the way `filepath.Match`
/// checks its pattern (moby calls `filepath.Match(p, ".")` for that).
fn compile(pattern: &str) -> Result<Matcher, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    // moby's shortcut: leading `**`, then only plain characters.
    let mut plain_after_leading_double_star =
        chars.len() > 2 && chars[0] == '*' && chars[1] == '*' && chars[2] != '/';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                if i != 0 {
                    plain_after_leading_double_star = false;
                }
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i == chars.len() {
                    Token::DoubleStarEnd
                } else {
                    Token::DoubleStarDirs
                });
            }
            '*' => {
                plain_after_leading_double_star = false;
                tokens.push(Token::Star);
                i += 1;
            }
            '?' => {
                plain_after_leading_double_star = false;
                tokens.push(Token::AnyChar);
                i += 1;
            }
            '\\' => {
                plain_after_leading_double_star = false;
                let Some(&escaped) = chars.get(i + 1) else {
                    return Err(
                        "it ends with a lone \"\\\" (write \"\\\\\" to match a backslash)"
                            .to_owned(),
                    );
                };
                tokens.push(Token::Literal(escaped));
                i += 2;
            }
            '[' => {
                plain_after_leading_double_star = false;
                let (token, next) = parse_class(&chars, i + 1)?;
                tokens.push(token);
                i = next;
            }
            ']' => {
                // A literal, but it makes moby use its regexp path.
                plain_after_leading_double_star = false;
                tokens.push(Token::Literal(c));
                i += 1;
            }
            _ => {
                tokens.push(Token::Literal(c));
                i += 1;
            }
        }
    }
    if plain_after_leading_double_star {
        return Ok(Matcher::Suffix(chars[2..].iter().collect()));
    }
    Ok(Matcher::Tokens(tokens))
}

/// Parses a character class after its `[`, with `filepath.Match`'s rules: optional
/// `^`, then one or more `c` or `lo-hi` items (each character may be `\`-escaped, and
/// an unescaped `-` or `]` may not start one), then `]`. Returns the token and the
/// index after the `]`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Token, usize), String> {
    const UNTERMINATED: &str =
        "a \"[\" character class is not closed by \"]\" (write \"\\[\" for a literal bracket)";
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, i + 1));
        }
        let lo = class_char(chars, &mut i)?;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            i += 1;
            hi = class_char(chars, &mut i)?;
        }
        if lo > hi {
            return Err(format!(
                "the range {lo}-{hi} in a \"[...]\" class is backwards (write {hi}-{lo})"
            ));
        }
        ranges.push((lo, hi));
    }

    /// Go's `getEsc`: one possibly escaped character of a class, which must not be
    /// the last character of the pattern (the class would be unterminated).
    fn class_char(chars: &[char], i: &mut usize) -> Result<char, String> {
        match chars.get(*i) {
            None => return Err(UNTERMINATED.to_owned()),
            Some('-') => {
                return Err(
                    "a \"-\" in a \"[...]\" class must sit between two characters (write \"\\-\" \
                     for a literal dash)"
                        .to_owned(),
                )
            }
            Some(']') => {
                return Err(
                    "empty \"[]\" class or misplaced \"]\" (write \"\\]\" for a literal bracket)"
                        .to_owned(),
                )
            }
            Some('\\') => *i += 1,
            Some(_) => {}
        }
        let Some(&c) = chars.get(*i) else {
            return Err(UNTERMINATED.to_owned());
        };
        *i += 1;
        if *i >= chars.len() {
            return Err(UNTERMINATED.to_owned());
        }
        Ok(c)
    }
}

/// A set of NFA states over a token list. State `2*i` is "about to match token `i`"
/// (`i == len` accepts); state `2*i + 1` is "inside `**`'s `.*/` of token `i`, after at
/// least one character".
struct Nfa<'t> {
    tokens: &'t [Token],
    states: Vec<bool>,
}

impl<'t> Nfa<'t> {
    fn new(tokens: &'t [Token]) -> Self {
        let mut nfa = Nfa {
            tokens,
            states: vec![false; 2 * (tokens.len() + 1)],
        };
        Self::enter(tokens, &mut nfa.states, 0);
        nfa
    }

    /// Adds state "at token `i`" and everything reachable from it without input.
    fn enter(tokens: &[Token], states: &mut [bool], mut i: usize) {
        loop {
            if states[2 * i] {
                return; // already there, and so is its closure
            }
            states[2 * i] = true;
            match tokens.get(i) {
                Some(token) if token.may_be_empty() => i += 1,
                _ => return,
            }
        }
    }

    fn run(mut self, input: &str) -> Self {
        let mut next = vec![false; self.states.len()];
        for c in input.chars() {
            next.fill(false);
            for (state, _) in self.states.iter().enumerate().filter(|(_, on)| **on) {
                let i = state / 2;
                let Some(token) = self.tokens.get(i) else {
                    continue; // the accepting state consumes nothing
                };
                match token {
                    Token::Literal(l) if *l == c => Self::enter(self.tokens, &mut next, i + 1),
                    Token::AnyChar if c != '/' => Self::enter(self.tokens, &mut next, i + 1),
                    Token::Class { negated, ranges } => {
                        let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                        if inside != *negated {
                            Self::enter(self.tokens, &mut next, i + 1);
                        }
                    }
                    Token::Star if c != '/' => Self::enter(self.tokens, &mut next, i),
                    Token::DoubleStarEnd => Self::enter(self.tokens, &mut next, i),
                    Token::DoubleStarDirs => {
                        next[2 * i + 1] = true;
                        if c == '/' {
                            Self::enter(self.tokens, &mut next, i + 1);
                        }
                    }
                    Token::Literal(_) | Token::AnyChar | Token::Star => {}
                }
            }
            std::mem::swap(&mut self.states, &mut next);
            if !self.alive() {
                break;
            }
        }
        self
    }

    fn accepts(&self) -> bool {
        self.states[2 * self.tokens.len()]
    }

    fn alive(&self) -> bool {
        self.states.iter().any(|on| *on)
    }
}

#[cfg(test)]
mod tests;

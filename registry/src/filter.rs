//! Consul's `?filter=` expressions (go-bexpr), evaluated against an answer's JSON form.
//!
//! Supported: selectors (`Service.Tags`, `Node.Meta.env`, `ServiceName`), `==`, `!=`, `contains`,
//! `not contains`, `in`, `not in`, `is empty`, `is not empty`, `and`, `or`, `not`, parentheses; values
//! as "double-quoted", `backquoted`, or bare words/numbers. `matches` (regular expressions) is not.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Match { selector: Vec<String>, op: Op, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Equal,
    NotEqual,
    Contains,
    NotContains,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    LParen,
    RParen,
    Eq,
    Ne,
}

fn lex(input: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '=' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Eq);
                i += 2
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Ne);
                i += 2
            }
            '"' | '`' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("filter: unterminated string in {input:?}")),
                        Some('\\') if quote == '"' => {
                            if let Some(n) = chars.get(i + 1) {
                                s.push(*n);
                            }
                            i += 2;
                        }
                        Some(ch) if *ch == quote => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Quoted(s));
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"()=!\"`".contains(chars[i]) {
                    i += 1;
                }
                if start == i {
                    return Err(format!("filter: unexpected character {c:?} in {input:?}"));
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x == w)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.toks.get(self.pos) == Some(&Tok::LParen) {
            self.pos += 1;
            let inner = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err("filter: missing closing parenthesis".into());
            }
            return Ok(inner);
        }
        self.matcher()
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => Ok(w),
            other => Err(format!("filter: expected a value, found {other:?}")),
        }
    }

    fn matcher(&mut self) -> Result<Filter, String> {
        // Either `Selector <op> value`, or `value in/not in Selector`.
        let first = match self.next() {
            Some(Tok::Word(w)) => (w, false),
            Some(Tok::Quoted(q)) => (q, true),
            other => return Err(format!("filter: expected a selector, found {other:?}")),
        };
        let selector_of = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        match self.next() {
            Some(Tok::Eq) => Ok(Filter::Match { selector: selector_of(&first.0), op: Op::Equal, value: self.value()? }),
            Some(Tok::Ne) => {
                Ok(Filter::Match { selector: selector_of(&first.0), op: Op::NotEqual, value: self.value()? })
            }
            Some(Tok::Word(w)) => match w.as_str() {
                "contains" => {
                    Ok(Filter::Match { selector: selector_of(&first.0), op: Op::Contains, value: self.value()? })
                }
                "in" => Ok(Filter::Match { selector: selector_of(&self.value()?), op: Op::In, value: first.0 }),
                "is" => {
                    let negated = self.peek_word("not");
                    if negated {
                        self.pos += 1;
                    }
                    match self.next() {
                        Some(Tok::Word(e)) if e == "empty" => Ok(Filter::Match {
                            selector: selector_of(&first.0),
                            op: if negated { Op::IsNotEmpty } else { Op::IsEmpty },
                            value: String::new(),
                        }),
                        other => Err(format!("filter: expected 'empty' after 'is', found {other:?}")),
                    }
                }
                "not" => match self.next() {
                    Some(Tok::Word(x)) if x == "contains" => {
                        Ok(Filter::Match { selector: selector_of(&first.0), op: Op::NotContains, value: self.value()? })
                    }
                    Some(Tok::Word(x)) if x == "in" => {
                        Ok(Filter::Match { selector: selector_of(&self.value()?), op: Op::NotIn, value: first.0 })
                    }
                    other => Err(format!("filter: unexpected {other:?} after 'not'")),
                },
                "matches" => Err("filter: the 'matches' operator is not supported".into()),
                other => Err(format!("filter: unknown operator {other:?}")),
            },
            other => Err(format!("filter: expected an operator after {:?}, found {other:?}", first.0)),
        }
    }
}

fn lookup<'a>(v: &'a Value, selector: &[String]) -> Option<&'a Value> {
    selector.iter().try_fold(v, |cur, part| cur.get(part))
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Filter {
    pub fn parse(input: &str) -> Result<Filter, String> {
        let mut p = Parser { toks: lex(input)?, pos: 0 };
        let f = p.or()?;
        if p.pos != p.toks.len() {
            return Err(format!("filter: unexpected trailing input in {input:?}"));
        }
        Ok(f)
    }

    pub fn matches<T: Serialize>(&self, item: &T) -> bool {
        match serde_json::to_value(item) {
            Ok(v) => self.eval(&v),
            Err(_) => false,
        }
    }

    fn eval(&self, v: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.eval(v) && b.eval(v),
            Filter::Or(a, b) => a.eval(v) || b.eval(v),
            Filter::Not(a) => !a.eval(v),
            Filter::Match { selector, op, value } => {
                let field = lookup(v, selector);
                let contains = |f: Option<&Value>| match f {
                    Some(Value::Array(items)) => items.iter().any(|i| as_text(i) == *value),
                    Some(Value::Object(m)) => m.contains_key(value),
                    Some(Value::String(s)) => s.contains(value.as_str()),
                    _ => false,
                };
                let empty = |f: Option<&Value>| match f {
                    None | Some(Value::Null) => true,
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Object(m)) => m.is_empty(),
                    Some(Value::String(s)) => s.is_empty(),
                    _ => false,
                };
                match op {
                    Op::Equal => field.is_some_and(|f| as_text(f) == *value),
                    Op::NotEqual => field.is_none_or(|f| as_text(f) != *value),
                    Op::Contains | Op::In => contains(field),
                    Op::NotContains | Op::NotIn => !contains(field),
                    Op::IsEmpty => empty(field),
                    Op::IsNotEmpty => !empty(field),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({"Node": {"Node": "n1", "Meta": {"env": "prod"}},
               "Service": {"Service": "web", "Tags": ["v1", "primary"], "Port": 80}})
    }

    #[test]
    fn evaluates_common_expressions() {
        let e = entry();
        let t = |s: &str| Filter::parse(s).unwrap().eval(&e);
        assert!(t(r#"Service.Tags contains "v1""#));
        assert!(t(r#""primary" in Service.Tags"#));
        assert!(!t(r#""v2" in Service.Tags"#));
        assert!(t(r#"Node.Meta.env == prod and Service.Port == 80"#));
        assert!(t(r#"Node.Meta.env != dev"#));
        assert!(t(r#"not (Service.Service == db) or Node.Node == x"#));
        assert!(t(r#"Node.Meta.zone is empty"#));
        assert!(t(r#"Service.Tags is not empty"#));
        assert!(t(r#""v3" not in Service.Tags"#));
    }

    #[test]
    fn rejects_bad_expressions_with_a_message() {
        for bad in ["Service.Tags contains", "(a == b", "a === b", "a matches \"x.*\"", "a == \"open"] {
            let err = Filter::parse(bad).unwrap_err();
            assert!(err.starts_with("filter:"), "{bad}: {err}");
        }
    }
}

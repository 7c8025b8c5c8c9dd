//! Condition expressions of BPMN sequence flows, over an instance's variables:
//! `amount >= 100 && user.tier == "pro"`, optionally wrapped as `${...}`.
//!
//! Grammar (lowest precedence first):
//! `or := and ("||" and)*`, `and := not ("&&" not)*`, `not := "!" not | cmp`,
//! `cmp := sum (("=="|"!="|">"|">="|"<"|"<=") sum)?`, `sum := term (("+"|"-") term)*`,
//! `term := unary (("*"|"/") unary)*`, `unary := "-" unary | primary`,
//! `primary := number | string | true | false | null | path | "(" or ")"`,
//! `path := ident ("." ident)*`. Strings use single or double quotes.
//! A missing variable is `null`; comparing numbers with strings is an error.

use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Value),
    /// A variable path (`a.b.c`).
    Var(Vec<String>),
    /// `!e`.
    Not(Box<Expr>),
    /// `-e`.
    Neg(Box<Expr>),
    /// A binary operation.
    Bin(Op, Box<Expr>, Box<Expr>),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// What is wrong with an expression, and where (byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at offset {at}")]
pub struct ExprError {
    /// The problem.
    pub message: String,
    /// Byte offset in the expression text.
    pub at: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    const SYMS: [&str; 18] =
        ["||", "&&", "==", "!=", ">=", "<=", ">", "<", "!", "+", "-", "*", "/", "(", ")", ".", "=", "|"];
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n = s[start..i].parse().map_err(|_| ExprError { message: "bad number".into(), at: start })?;
            out.push((Tok::Num(n), start));
        } else if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            let mut text = String::new();
            loop {
                match s[i..].chars().next() {
                    None => return Err(ExprError { message: "unterminated string".into(), at: start }),
                    Some(ch) if ch == c => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < b.len() => {
                        let next = s[i + 1..].chars().next().unwrap_or('\\');
                        text.push(next);
                        i += 1 + next.len_utf8();
                    }
                    Some(ch) => {
                        text.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((Tok::Str(text), start));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Ident(s[start..i].to_owned()), start));
        } else if let Some(sym) = SYMS.iter().find(|sym| s[i..].starts_with(**sym)) {
            if matches!(*sym, "=" | "|") {
                return Err(ExprError { message: format!("unexpected '{sym}' (did you mean '{sym}{sym}'?)"), at: i });
            }
            out.push((Tok::Sym(sym), i));
            i += sym.len();
        } else {
            return Err(ExprError { message: format!("unexpected character '{c}'"), at: i });
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |t| t.1)
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.toks.get(self.pos), Some((Tok::Sym(s), _)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn binary(
        &mut self,
        ops: &[(&str, Op)],
        next: fn(&mut Self) -> Result<Expr, ExprError>,
    ) -> Result<Expr, ExprError> {
        let mut left = next(self)?;
        'outer: loop {
            for (sym, op) in ops {
                if self.eat(sym) {
                    let right = next(self)?;
                    left = Expr::Bin(*op, Box::new(left), Box::new(right));
                    continue 'outer;
                }
            }
            return Ok(left);
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[("||", Op::Or)], Self::and)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[("&&", Op::And)], Self::not)
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.eat("!") { Ok(Expr::Not(Box::new(self.not()?))) } else { self.cmp() }
    }

    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let left = self.sum()?;
        for (sym, op) in [("==", Op::Eq), ("!=", Op::Ne), (">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
        {
            if self.eat(sym) {
                return Ok(Expr::Bin(op, Box::new(left), Box::new(self.sum()?)));
            }
        }
        Ok(left)
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[("+", Op::Add), ("-", Op::Sub)], Self::term)
    }

    fn term(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[("*", Op::Mul), ("/", Op::Div)], Self::unary)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat("-") { Ok(Expr::Neg(Box::new(self.unary()?))) } else { self.primary() }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let at = self.at();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(ExprError { message: "expression ends early".into(), at });
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Lit(serde_json::json!(n))),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Ident(w) if w == "true" || w == "false" => Ok(Expr::Lit(Value::Bool(w == "true"))),
            Tok::Ident(w) if w == "null" => Ok(Expr::Lit(Value::Null)),
            Tok::Ident(w) => {
                let mut path = vec![w];
                while self.eat(".") {
                    match self.toks.get(self.pos).cloned() {
                        Some((Tok::Ident(n), _)) => {
                            self.pos += 1;
                            path.push(n);
                        }
                        _ => return Err(ExprError { message: "expected a name after '.'".into(), at: self.at() }),
                    }
                }
                Ok(Expr::Var(path))
            }
            Tok::Sym("(") => {
                let e = self.or()?;
                if !self.eat(")") {
                    return Err(ExprError { message: "expected ')'".into(), at: self.at() });
                }
                Ok(e)
            }
            Tok::Sym(s) => Err(ExprError { message: format!("unexpected '{s}'"), at }),
        }
    }
}

impl Expr {
    /// Parses `text` (an optional `${...}` wrapper is removed first).
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let trimmed = text.trim();
        let inner = trimmed.strip_prefix("${").and_then(|s| s.strip_suffix('}')).unwrap_or(trimmed);
        let mut p = Parser { toks: lex(inner)?, pos: 0, end: inner.len() };
        let e = p.or()?;
        if p.pos < p.toks.len() {
            return Err(ExprError { message: "unexpected text after the expression".into(), at: p.at() });
        }
        Ok(e)
    }

    /// Evaluates against `vars` (an object; paths descend into objects).
    pub fn eval(&self, vars: &Value) -> Result<Value, String> {
        Ok(match self {
            Self::Lit(v) => v.clone(),
            Self::Var(path) => path.iter().try_fold(vars, |v, k| v.get(k)).cloned().unwrap_or(Value::Null),
            Self::Not(e) => Value::Bool(!truth(&e.eval(vars)?)?),
            Self::Neg(e) => serde_json::json!(-number(&e.eval(vars)?)?),
            Self::Bin(Op::And, a, b) => Value::Bool(truth(&a.eval(vars)?)? && truth(&b.eval(vars)?)?),
            Self::Bin(Op::Or, a, b) => Value::Bool(truth(&a.eval(vars)?)? || truth(&b.eval(vars)?)?),
            Self::Bin(op, a, b) => {
                let (x, y) = (a.eval(vars)?, b.eval(vars)?);
                match op {
                    Op::Eq => Value::Bool(equal(&x, &y)),
                    Op::Ne => Value::Bool(!equal(&x, &y)),
                    Op::Gt | Op::Ge | Op::Lt | Op::Le => {
                        let ord = order(&x, &y)?;
                        Value::Bool(match op {
                            Op::Gt => ord.is_gt(),
                            Op::Ge => ord.is_ge(),
                            Op::Lt => ord.is_lt(),
                            _ => ord.is_le(),
                        })
                    }
                    Op::Add => serde_json::json!(number(&x)? + number(&y)?),
                    Op::Sub => serde_json::json!(number(&x)? - number(&y)?),
                    Op::Mul => serde_json::json!(number(&x)? * number(&y)?),
                    _ => {
                        let d = number(&y)?;
                        if d == 0.0 {
                            return Err("division by zero".into());
                        }
                        serde_json::json!(number(&x)? / d)
                    }
                }
            }
        })
    }

    /// Evaluates to a boolean (a condition); anything else is an error.
    pub fn test(&self, vars: &Value) -> Result<bool, String> {
        truth(&self.eval(vars)?)
    }
}

fn truth(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("expected a boolean, got {v}"))
}

fn number(v: &Value) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("expected a number, got {v}"))
}

fn equal(x: &Value, y: &Value) -> bool {
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => x == y,
    }
}

fn order(x: &Value, y: &Value) -> Result<std::cmp::Ordering, String> {
    match (x, y) {
        (Value::Number(_), Value::Number(_)) => {
            number(x)?.partial_cmp(&number(y)?).ok_or_else(|| "numbers do not compare".to_owned())
        }
        (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
        _ => Err(format!("cannot order {x} and {y}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn test(e: &str, vars: Value) -> Result<bool, String> {
        Expr::parse(e).map_err(|e| e.to_string())?.test(&vars)
    }

    #[test]
    fn conditions_over_variables() {
        let vars = json!({"amount": 120.5, "user": {"tier": "pro", "purchases": 3}, "vip": false});
        assert_eq!(test("amount >= 100", vars.clone()), Ok(true));
        assert_eq!(test("${amount > 200}", vars.clone()), Ok(false));
        assert_eq!(test("user.tier == 'pro' && user.purchases > 2", vars.clone()), Ok(true));
        assert_eq!(test("!vip || amount < 0", vars.clone()), Ok(true));
        assert_eq!(test("(amount - 20.5) * 2 == 200", vars.clone()), Ok(true));
        assert_eq!(test("-amount < 0 && user.purchases / 3 == 1", vars.clone()), Ok(true));
        assert_eq!(test("missing == null", vars.clone()), Ok(true));
        assert_eq!(test("user.tier != \"free\"", vars.clone()), Ok(true));
        assert_eq!(test("'abc' < 'abd'", vars), Ok(true));
    }

    #[test]
    fn precedence_is_conventional() {
        assert_eq!(test("true || false && false", json!({})), Ok(true));
        assert_eq!(test("1 + 2 * 3 == 7", json!({})), Ok(true));
        assert_eq!(test("!(1 > 2) && 2 > 1", json!({})), Ok(true));
    }

    #[test]
    fn bad_expressions_say_where() {
        let err = |s: &str| Expr::parse(s).err().map(|e| (e.message, e.at));
        assert_eq!(err("amount = 5"), Some(("unexpected '=' (did you mean '=='?)".into(), 7)));
        assert_eq!(err("amount >"), Some(("expression ends early".into(), 8)));
        assert_eq!(err("(a > 1"), Some(("expected ')'".into(), 6)));
        assert_eq!(err("a > 1 b"), Some(("unexpected text after the expression".into(), 6)));
        assert_eq!(err("'open"), Some(("unterminated string".into(), 0)));
        assert_eq!(err("a # b"), Some(("unexpected character '#'".into(), 2)));
    }

    #[test]
    fn type_errors_are_errors_not_false() {
        assert!(test("amount", json!({"amount": 1})).is_err());
        assert!(test("'a' > 1", json!({})).is_err());
        assert!(test("1 / 0 > 1", json!({})).is_err());
    }
}

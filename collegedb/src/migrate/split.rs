//! Splits a migration file into its statements, as SQLite's `sqlite3_complete()` decides where one
//! ends: at a `;` outside strings, quoted identifiers and comments, except inside the body of a
//! `CREATE TRIGGER` (which ends at `END;`). D1's `batch()` takes one statement per entry, so a
//! file is sent as its statements, in one transaction with the record of the migration.

/// What the state machine sees.
#[derive(Clone, Copy)]
enum Token {
    Semi = 0,
    Space = 1,
    Other = 2,
    Explain = 3,
    Create = 4,
    Temp = 5,
    Trigger = 6,
    End = 7,
}

/// `sqlite3_complete()`'s transitions. States: 0 nothing yet, 1 at a statement's start or end,
/// 2 ordinary text, 3 after EXPLAIN, 4 after CREATE, 5 in a trigger, 6 in a trigger after `;`,
/// 7 in a trigger after END.
const TRANSITIONS: [[u8; 8]; 8] = [
    [1, 0, 2, 3, 4, 2, 2, 2],
    [1, 1, 2, 3, 4, 2, 2, 2],
    [1, 2, 2, 2, 2, 2, 2, 2],
    [1, 3, 3, 2, 4, 2, 2, 2],
    [1, 4, 2, 2, 2, 4, 5, 2],
    [6, 5, 5, 5, 5, 5, 5, 5],
    [6, 6, 5, 5, 5, 5, 5, 7],
    [1, 7, 5, 5, 5, 5, 5, 5],
];

/// The statements of `sql`, each without its final `;`, trimmed; whitespace and comments
/// between statements are dropped. Text after the last `;` is a statement if it holds more
/// than whitespace and comments.
pub(crate) fn statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let (mut state, mut start, mut i) = (0u8, 0usize, 0usize);
    let mut substance = false;
    while i < bytes.len() {
        let (token, next) = token_at(bytes, i);
        if !matches!(token, Token::Space | Token::Semi) {
            substance = true;
        }
        state = TRANSITIONS[state as usize][token as usize];
        i = next;
        if matches!(token, Token::Semi) && state == 1 {
            if substance {
                push(&mut statements, &sql[start..i - 1]);
            }
            start = i;
            substance = false;
        }
    }
    if substance {
        push(&mut statements, &sql[start..]);
    }
    statements
}

fn push(statements: &mut Vec<String>, text: &str) {
    let text = text.trim();
    if !text.is_empty() {
        statements.push(text.to_owned());
    }
}

/// The token at `i`, and where the next one starts.
fn token_at(bytes: &[u8], i: usize) -> (Token, usize) {
    let end_of = |from: usize, close: &[u8]| -> usize {
        let mut j = from;
        while j < bytes.len() {
            if bytes[j..].starts_with(close) {
                return j + close.len();
            }
            j += 1;
        }
        bytes.len()
    };
    match bytes[i] {
        b';' => (Token::Semi, i + 1),
        b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => (Token::Space, i + 1),
        b'/' if bytes.get(i + 1) == Some(&b'*') => (Token::Space, end_of(i + 2, b"*/")),
        b'-' if bytes.get(i + 1) == Some(&b'-') => (Token::Space, end_of(i + 2, b"\n")),
        b'[' => (Token::Other, end_of(i + 1, b"]")),
        quote @ (b'\'' | b'"' | b'`') => {
            // A doubled quote stays inside: scanning on from it finds the real end.
            let mut j = i + 1;
            loop {
                j = end_of(j, &[quote]);
                if bytes.get(j) == Some(&quote) {
                    j += 1;
                } else {
                    break (Token::Other, j);
                }
            }
        }
        c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
            let mut j = i;
            while j < bytes.len()
                && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] >= 0x80)
            {
                j += 1;
            }
            let word = &bytes[i..j];
            let is = |keyword: &str| word.eq_ignore_ascii_case(keyword.as_bytes());
            let token = if is("create") {
                Token::Create
            } else if is("trigger") {
                Token::Trigger
            } else if is("temp") || is("temporary") {
                Token::Temp
            } else if is("end") {
                Token::End
            } else if is("explain") {
                Token::Explain
            } else {
                Token::Other
            };
            (token, j)
        }
        _ => (Token::Other, i + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn splits_at_semicolons_outside_strings_comments_and_trigger_bodies() {
        let sql = "
            -- a comment; with a semicolon
            CREATE TABLE a (x TEXT DEFAULT ';', \"we;ird\" INTEGER, [b;c] BLOB);
            /* block; comment */
            INSERT INTO a (x) VALUES ('it''s; fine');
            CREATE TEMP TRIGGER t AFTER INSERT ON a BEGIN
                UPDATE a SET x = 'end;' WHERE rowid = NEW.rowid;
                SELECT 1;
            END;
            create trigger u after delete on a begin select 2; end
            ;
            SELECT `x;y` FROM a
        ";
        let got = statements(sql);
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(
            got[0].starts_with("-- a comment; with a semicolon\n"),
            "{}",
            got[0]
        );
        assert!(got[0].ends_with("[b;c] BLOB)"), "{}", got[0]);
        assert_eq!(
            got[1],
            "/* block; comment */\n            INSERT INTO a (x) VALUES ('it''s; fine')"
        );
        assert!(got[2].starts_with("CREATE TEMP TRIGGER t") && got[2].ends_with("END"));
        assert!(got[2].contains("SELECT 1;"), "{}", got[2]);
        assert_eq!(
            got[3],
            "create trigger u after delete on a begin select 2; end"
        );
        assert_eq!(got[4], "SELECT `x;y` FROM a");
    }

    #[test]
    fn whitespace_and_comments_alone_are_no_statement() {
        assert!(statements("  -- nothing\n /* at all */ ; ;\n").is_empty());
        assert_eq!(statements("SELECT 1"), ["SELECT 1"]);
        assert_eq!(statements("SELECT 1;;SELECT 2;"), ["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn an_unterminated_string_runs_to_the_end() {
        assert_eq!(statements("SELECT 'a;b"), ["SELECT 'a;b"]);
    }
}

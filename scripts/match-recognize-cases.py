#!/usr/bin/env python3
# Writes tests/data/match_recognize_cases.jsonl: Flink MatchRecognizeITCase tests
# transcribed into the corpus format, and tripline's own MATCH_RECOGNIZE cases.
# Usage: scripts/match-recognize-cases.py > tests/data/match_recognize_cases.jsonl
import json
Q1 = {"kind":"one","min":1,"max":1,"optional":False,"greedy":False,"consecutive":False,"allow_combinations":False,"until":None,"reluctant":False,"inner_contiguity":None}
def st(name, cond, contig="strict", q=Q1):
    return {"name":name,"contiguity":contig,"condition":cond,"quantifier":dict(q)}
def stages(*ss):
    out=list(ss); out[0]["contiguity"]=None; return {"stages":out}
SRC="apache/flink flink-table/flink-table-planner/src/test/scala/org/apache/flink/table/runtime/stream/sql/MatchRecognizeITCase.scala"
OWN="tripline: written for the MATCH_RECOGNIZE features this corpus checks beyond Flink's own cases"
CMP="unordered: multiset of output rows"
cases=[]
def case(id, source, sql, events, pattern, rows, notes, **kw):
    c={"id":id,"source":source,"kind":"sql_match_recognize","within_ms":None,"comparison":CMP,
       "events":[dict(seq=i,**e) for i,e in enumerate(events)],"sql":sql,"pattern":pattern,
       "skip":None,"expected_rows":rows,"expected_matches":None,"notes":notes}
    c.update(kw); cases.append(c)

# Flink: testSimplePattern (no AFTER MATCH: SKIP PAST LAST ROW; SELECT list; quoted and escaped names)
ev=[dict(t=None,id=i,name=n) for i,n in [(1,"a"),(2,"z"),(3,"b"),(4,"c"),(5,"d"),(6,"a"),(7,"b"),(8,"c"),(9,"h")]]
case("MatchRecognizeITCase.testSimplePattern",SRC,
 "SELECT T.aid, T.bid, T.cid FROM MyTable MATCH_RECOGNIZE ( ORDER BY proctime MEASURES `A\"`.id AS aid, \\u006C.id AS bid, C.id AS cid PATTERN (`A\"` \\u006C C) DEFINE `A\"` AS name = 'a', \\u006C AS name = 'b', C AS name = 'c' ) AS T",
 ev, stages(st('A"',"name = 'a'"),st("l","name = 'b'"),st("C","name = 'c'")), ["6,7,8"],
 "No AFTER MATCH clause: the SQL default SKIP PAST LAST ROW. \\u006C is Java's escape for `l`.")

# Flink: testSimplePatternWithNulls
ev=[dict(t=None,id=i,name=n,nullField=None) for i,n in [(1,"a"),(2,"b"),(3,"c"),(4,"d"),(5,None),(6,"a"),(7,"b"),(8,"c"),(9,None)]]
case("MatchRecognizeITCase.testSimplePatternWithNulls",SRC,
 "SELECT T.aid, T.bNull, T.cid, T.aNull FROM MyTable MATCH_RECOGNIZE ( ORDER BY proctime MEASURES A.id AS aid, A.nullField AS aNull, LAST(B.nullField) AS bNull, C.id AS cid PATTERN (A B C) DEFINE A AS name = 'a' AND nullField IS NULL, B AS name = 'b' AND LAST(A.nullField) IS NULL, C AS name = 'c' ) AS T",
 ev, stages(st("A","name = 'a' AND nullField IS NULL"),st("B","name = 'b' AND LAST(A.nullField) IS NULL"),st("C","name = 'c'")),
 ["1,null,3,null","6,null,8,null"], "SELECT lists the measures in another order than MEASURES.")

# Flink: testCodeSplitsAreProperlyGenerated (LIKE, two partition columns)
ev=[dict(t=None,id=i,name=n,key1=a,key2=b) for i,n,a,b in [(1,"a","key1","second_key3"),(2,"b","key1","second_key3"),(3,"c","key1","second_key3"),(4,"d","key","second_key"),(5,"e","key","second_key"),(6,"a","key2","second_key4"),(7,"b","key2","second_key4"),(8,"c","key2","second_key4"),(9,"f","key","second_key")]]
case("MatchRecognizeITCase.testCodeSplitsAreProperlyGenerated",SRC,
 "SELECT * FROM MyTable MATCH_RECOGNIZE ( PARTITION BY key1, key2 ORDER BY proctime MEASURES A.id AS aid, A.key1 AS akey1, LAST(B.id) AS bid, C.id AS cid, C.key2 AS ckey2 PATTERN (A B C) DEFINE A AS name = 'a' AND key1 LIKE '%key%' AND id > 0, B AS name = 'b' AND LAST(A.name, 2) IS NULL, C AS name = 'c' AND LAST(A.name) = 'a' ) AS T",
 ev, stages(st("A","name = 'a' AND key1 LIKE '%key%' AND id > 0"),st("B","name = 'b' AND LAST(A.name, 2) IS NULL"),st("C","name = 'c' AND LAST(A.name) = 'a'")),
 ["key1,second_key3,1,key1,2,3,second_key3","key2,second_key4,6,key2,7,8,second_key4"], "")

# Flink: testEventsAreProperlyOrdered (event time, ORDER BY three keys, watermarks)
data=[("E",2,(12,1,"a",1)),("E",1,(11,2,"b",2)),("E",3,(10,3,"c",3)),("W",3,None),
 ("E",4,(8,4,"a",4)),("E",4,(9,5,"b",5)),("E",5,(7,6,"c",6)),("W",5,None),
 ("E",6,(6,8,"a",7)),("E",6,(6,7,"b",8)),("E",8,(4,9,"c",9)),("W",8,None),
 ("E",9,(3,10,"a",10)),("E",10,(2,11,"b",11)),("E",11,(1,12,"c",12)),("W",11,None)]
ev=[]
for k,t,v in data:
    if k=="W": ev.append(dict(watermark=t))
    else: ev.append(dict(t=t,secondaryOrder=v[0],ternaryOrder=v[1],name=v[2],id=v[3],tstamp=t))
case("MatchRecognizeITCase.testEventsAreProperlyOrdered",SRC,
 "SELECT T.aid, T.bid, T.cid FROM MyTable MATCH_RECOGNIZE ( ORDER BY tstamp, secondaryOrder DESC, ternaryOrder ASC MEASURES A.id AS aid, B.id AS bid, C.id AS cid PATTERN (A B C) DEFINE A AS name = 'a', B AS name = 'b', C AS name = 'c' ) AS T",
 ev, stages(st("A","name = 'a'"),st("B","name = 'b'"),st("C","name = 'c'")), ["10,11,12"],
 "Rows are sorted by tstamp, then secondaryOrder descending, then ternaryOrder as the watermark passes them.")

# Own cases
ev=[dict(t=None,id=i,name=n) for i,n in [(1,"card_5%"),(2,"cardX5%"),(3,"card_5"),(4,None),(5,"CARD_59%"),(6,"card_5%")]]
case("Tripline.likeWildcardsAndEscape",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY proctime MEASURES A.id AS aid PATTERN (A) DEFINE A AS name LIKE 'card!_5!%' ESCAPE '!' ) AS T",
 ev, stages(st("A","name LIKE 'card!_5!%' ESCAPE '!'")), ["1","6"],
 "With the escape, `_` and `%` are themselves; a null name matches nothing.")
case("Tripline.likeUnderscoreIsOneCharacter",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY proctime MEASURES A.id AS aid PATTERN (A) DEFINE A AS name LIKE 'card_5%' ) AS T",
 ev, stages(st("A","name LIKE 'card_5%'")), ["1","2","3","6"], "Case-sensitive, and the whole value must match.")
case("Tripline.notLikeIsNullForNull",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY proctime MEASURES A.id AS aid PATTERN (A) DEFINE A AS name NOT LIKE 'card%' ) AS T",
 ev, stages(st("A","name NOT LIKE 'card%'")), ["5"], "NOT LIKE over a null name is null: no match for row 4.")
ev=[dict(t=None,id=1,name="a",amount=5),dict(t=None,id=2,name=None,amount=5),dict(t=None,id=3,amount=None),dict(t=None,id=4,name="b")]
case("Tripline.comparisonsWithNullAreNull",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY proctime MEASURES A.id AS aid, A.amount AS amount PATTERN (A) DEFINE A AS name <> 'a' OR NOT (amount = 5) ) AS T",
 ev, stages(st("A","name <> 'a' OR NOT (amount = 5)")), ["4,null"],
 "Rows 2 and 3 have a null name or amount: <> and NOT (=) are null there, not true. Row 4 has no amount field at all: its measure is null.")
ev=[dict(t=None,id=i,name=n) for i,n in [(1,"a"),(2,"b"),(3,"a"),(4,"b")]]
case("Tripline.skipToFirstOfTheFirstVariableIsRejected",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY proctime MEASURES A.id AS aid AFTER MATCH SKIP TO FIRST A PATTERN (A B) DEFINE A AS name = 'a', B AS name = 'b' ) AS T",
 ev, stages(st("A","name = 'a'"),st("B","name = 'b'")), None,
 "Resuming at the match's own first row would find the same match forever; Flink fails the query at run time.",
 expected_error="FlinkRuntimeException")
case("Tripline.skipToNextRow",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY proctime MEASURES FIRST(A.id) AS aid, B.id AS bid AFTER MATCH SKIP TO NEXT ROW PATTERN (A+ B) DEFINE A AS name = 'a', B AS name = 'b' ) AS T",
 [dict(t=None,id=i,name=n) for i,n in [(1,"a"),(2,"a"),(3,"b")]],
 stages(st("A","name = 'a'",q=dict(Q1,kind="oneOrMore",max=None,greedy=True,consecutive=True,inner_contiguity="strict")),st("B","name = 'b'")),
 ["1,3","2,3"], "Greedy A+: the match from row 1 takes rows 1-3; skipping to row 2 finds 2-3.")
data=[("E",1000,(1,"a",5)),("E",2000,(2,"b",1)),("E",2000,(3,"b",9)),("E",500,(4,"c",0)),("W",2000,None),("E",2000,(5,"b",7)),("E",3000,(6,"c",1)),("W",3000,None)]
ev=[]
for k,t,v in data:
    if k=="W": ev.append(dict(watermark=t))
    else: ev.append(dict(t=t,id=v[0],name=v[1],prio=v[2]))
case("Tripline.descendingOrderAndLateRows",OWN,
 "SELECT * FROM T MATCH_RECOGNIZE ( ORDER BY rowtime, prio DESC MEASURES A.id AS aid, LAST(B.id) AS bid, C.id AS cid PATTERN (A B+ C) DEFINE A AS name = 'a', B AS name = 'b', C AS name = 'c' ) AS T",
 ev, stages(st("A","name = 'a'"),st("B","name = 'b'",q=dict(Q1,kind="oneOrMore",max=None,greedy=True,consecutive=True,inner_contiguity="strict")),st("C","name = 'c'")),
 ["1,2,6"],
 "Row 4 arrives late in the input but before the watermark passes its time, so it goes first; rows 2 and 3 share a time and go by prio descending (3, then 2, which is LAST(B)); row 5 comes after the watermark reached its time: it is late and dropped (kept, it would be LAST(B)).")
for c in cases:
    print(json.dumps(c))

package lapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/xdpgate/xdpgate/internal/decision"
)

// pullStartup makes a startup request (GET /v1/decisions/stream?startup=true
// with the client's filters, through the same HTTP client, headers and
// URL as CrowdSec's client) and decodes the answer one decision at a time,
// straight from the connection: neither the body nor the whole list of
// decisions is ever held. With asSet the decisions are packed into a
// decision.Set as they come; otherwise they are collected as
// *models.Decision values, as CrowdSec's client returns them.
//
// The deleted list of a startup answer (decisions that expired) is read
// past without being kept: a startup batch means what is in New.
func (c *Client) pullStartup(ctx context.Context, asSet bool) (pulled, error) {
	req, err := c.api.PrepareRequest(ctx, http.MethodGet, c.api.URLPrefix+"/decisions/stream?"+streamQuery(c.filters, true).Encode(), nil)
	if err != nil {
		return pulled{}, c.pullError(0, err)
	}
	if c.api.UserAgent != "" {
		req.Header.Set("User-Agent", c.api.UserAgent)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return pulled{}, c.pullError(0, err)
	}
	defer resp.Body.Close()
	if err := apiclient.CheckResponse(resp); err != nil {
		return pulled{}, c.pullError(resp.StatusCode, err)
	}

	var res pulled
	add := func(d *models.Decision) { res.new = append(res.new, d) }
	if asSet {
		res.set = new(decision.Set)
		add = res.set.Add
	}
	if err := decodeStream(resp.Body, add, asSet); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return pulled{}, c.pullError(0, fmt.Errorf("read the startup set: %w", err))
	}
	return res, nil
}

// streamQuery encodes the stream filters as CrowdSec's client does: empty
// strings are left out, and community_pull and additional_pull are sent
// only when false.
func streamQuery(o apiclient.DecisionsStreamOpts, startup bool) url.Values {
	v := url.Values{}
	if startup {
		v.Set("startup", "true")
	}
	if !o.CommunityPull {
		v.Set("community_pull", "false")
	}
	if !o.AdditionalPull {
		v.Set("additional_pull", "false")
	}
	for _, f := range []struct{ key, val string }{
		{"scopes", o.Scopes},
		{"scenarios_containing", o.ScenariosContaining},
		{"scenarios_not_containing", o.ScenariosNotContaining},
		{"origins", o.Origins},
	} {
		if f.val != "" {
			v.Set(f.key, f.val)
		}
	}
	return v
}

// decodeStream reads a stream answer, {"new": [...], "deleted": [...]},
// and passes every decision of "new" to add as soon as it is decoded; a
// null element is passed as nil, as CrowdSec's client would have it in
// its list. An empty body or a null answer is an empty set.
//
// With reuse, add does not retain the decision it is given: every element
// is decoded into the same memory, and only the fields a decision.Set
// keeps are read, so a startup set of 100k decisions allocates little
// more than the bytes of its strings.
func decodeStream(r io.Reader, add func(*models.Decision), reuse bool) error {
	dec := json.NewDecoder(r)
	tok, err := dec.Token()
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return err
	case tok == nil:
		return nil
	case tok != json.Delim('{'):
		return fmt.Errorf("the answer is not a JSON object: %v", tok)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case "new":
			err = decodeList(dec, add, reuse)
		case "deleted":
			err = decodeList(dec, nil, false)
		default:
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return fmt.Errorf("%v: %w", tok, err)
		}
	}
	_, err = dec.Token() // the closing brace
	return err
}

// DecodeSet reads a startup answer of the decision stream from r into a
// packed decision.Set, as the client does for WithDecisionSets.
func DecodeSet(r io.Reader) (*decision.Set, error) {
	set := new(decision.Set)
	if err := decodeStream(r, set.Add, true); err != nil {
		return nil, err
	}
	return set, nil
}

// wireDecision is a decision as a Set keeps it, decoded without a pointer
// to allocate: an empty string stands for a field LAPI left out (for
// Parse, a missing and an empty value are equally unusable).
type wireDecision struct {
	ID       int64  `json:"id"`
	Value    string `json:"value"`
	Scope    string `json:"scope"`
	Type     string `json:"type"`
	Origin   string `json:"origin"`
	Duration string `json:"duration"`
}

// decision points m's fields at w's; m is valid until w changes.
func (w *wireDecision) decision(m *models.Decision) {
	*m = models.Decision{ID: w.ID}
	for _, f := range [...]struct {
		dst **string
		v   *string
	}{{&m.Value, &w.Value}, {&m.Scope, &w.Scope}, {&m.Type, &w.Type}, {&m.Origin, &w.Origin}, {&m.Duration, &w.Duration}} {
		if *f.v != "" {
			*f.dst = f.v
		}
	}
}

// decodeList reads a list of decisions, or null, passing each to add; with
// a nil add it only reads past them. With reuse, see decodeStream.
func decodeList(dec *json.Decoder, add func(*models.Decision), reuse bool) error {
	tok, err := dec.Token()
	switch {
	case err != nil:
		return err
	case tok == nil:
		return nil
	case tok != json.Delim('['):
		return fmt.Errorf("not a list: %v", tok)
	}
	var w *wireDecision
	var m models.Decision
	for dec.More() {
		if add == nil {
			var skip struct{}
			if err := dec.Decode(&skip); err != nil {
				return err
			}
			continue
		}
		if reuse {
			// A null element sets w to nil, and is passed on as nil.
			if w == nil {
				w = new(wireDecision)
			}
			*w = wireDecision{}
			if err := dec.Decode(&w); err != nil {
				return err
			}
			if w == nil {
				add(nil)
				continue
			}
			w.decision(&m)
			add(&m)
			continue
		}
		var d *models.Decision
		if err := dec.Decode(&d); err != nil {
			return err
		}
		add(d)
	}
	_, err = dec.Token() // the closing bracket
	return err
}
